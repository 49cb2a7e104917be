"""Reconcile (R34): re-dispatch rows that stalled, bounded by the attempt limit; prune.

Safe to run concurrently with itself: candidate rows are read with SKIP LOCKED where
the dialect has it, and each row is claimed by a compare-and-set on (state, updated_at),
so two runs never both re-dispatch the same row (SQLite included).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import and_, delete, or_, select, update

from {{ cookiecutter.package_name }}.ledger.db import changed_rows, session_scope
from {{ cookiecutter.package_name }}.ledger.deadletters import send_to_dead_queue
from {{ cookiecutter.package_name }}.ledger.models import FINAL_STATES, TaskRecord, TaskState, utcnow
from {{ cookiecutter.package_name }}.ledger.publish import publish
from {{ cookiecutter.package_name }}.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    redispatched: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)


def stale_after(settings: Settings) -> dict[TaskState, timedelta]:
    """How long a row may sit in each unfinished state before it counts as lost."""
    return {
        TaskState.QUEUED: timedelta(seconds=settings.reconcile_queued_after),
        TaskState.PUBLISHED: timedelta(seconds=settings.reconcile_published_after),
        TaskState.STARTED: timedelta(seconds=settings.reconcile_started_after),
        TaskState.RETRY: timedelta(seconds=settings.reconcile_retry_after),
    }


def reconcile(app: Celery, settings: Settings, now: datetime | None = None) -> ReconcileReport:
    now = now or utcnow()
    report = ReconcileReport()
    to_publish: list[TaskRecord] = []
    to_bury: list[TaskRecord] = []
    stale = or_(
        *(
            and_(TaskRecord.state == state, TaskRecord.updated_at < now - age)
            for state, age in stale_after(settings).items()
        )
    )
    not_waiting = or_(TaskRecord.eta.is_(None), TaskRecord.eta < now)
    with session_scope() as session:
        candidates = session.scalars(
            select(TaskRecord)
            .where(stale, not_waiting)
            .order_by(TaskRecord.updated_at)
            .limit(settings.reconcile_batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        for row in candidates:
            # Bounded both ways: too many starts (a poison task), or too many sends
            # that never started (nothing consumes its queue).
            exhausted = max(row.attempts, row.dispatches) >= settings.ledger_max_attempts
            target = TaskState.DEAD if exhausted else TaskState.QUEUED
            claimed = changed_rows(
                session,
                update(TaskRecord)
                .where(
                    TaskRecord.id == row.id,
                    TaskRecord.state == row.state,
                    TaskRecord.updated_at == row.updated_at,
                )
                .values(
                    state=target,
                    updated_at=now,
                    finished_at=now if exhausted else None,
                    last_error=(
                        f"attempt limit {settings.ledger_max_attempts} reached"
                        if exhausted
                        else row.last_error
                    ),
                )
                .execution_options(synchronize_session=False),
            )
            if not claimed:
                continue
            logger.warning(
                "reconcile: task stalled",
                extra={
                    "event": "reconcile_dead" if exhausted else "reconcile_redispatch",
                    "task_id": row.id,
                    "task_name": row.name,
                    "stalled_state": row.state,
                    "attempts": row.attempts,
                },
            )
            (to_bury if exhausted else to_publish).append(row)
    for row in to_publish:
        row.state = TaskState.QUEUED
        publish(app, row)
        report.redispatched.append(row.id)
    for row in to_bury:
        reason = f"attempt limit {settings.ledger_max_attempts} reached"
        send_to_dead_queue(app, row.id, row.name, row.kwargs, reason)
        report.dead.append(row.id)
    return report


def prune(settings: Settings, now: datetime | None = None) -> int:
    """Delete finished rows older than the retention period; returns how many."""
    cutoff = (now or utcnow()) - timedelta(days=settings.ledger_retention_days)
    with session_scope() as session:
        deleted = changed_rows(
            session,
            delete(TaskRecord)
            .where(TaskRecord.state.in_(FINAL_STATES), TaskRecord.finished_at < cutoff)
            .execution_options(synchronize_session=False),
        )
    logger.info("ledger pruned", extra={"event": "ledger_pruned", "deleted": deleted})
    return int(deleted)
