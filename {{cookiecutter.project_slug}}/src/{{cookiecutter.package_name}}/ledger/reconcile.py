"""Reconcile (R34): re-dispatch rows that stalled, bounded by the attempt limit; prune.

Safe to run concurrently with itself: candidate rows are read with SKIP LOCKED where
the dialect has it, and each row is claimed by a compare-and-set on (state, updated_at),
so two runs never both re-dispatch the same row (SQLite included).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import and_, delete, or_, select, tuple_, update
from sqlalchemy.orm import Session

from {{ cookiecutter.package_name }}.ledger.db import changed_rows, session_scope
from {{ cookiecutter.package_name }}.ledger.deadletters import send_to_dead_queue
from {{ cookiecutter.package_name }}.ledger.models import FINAL_STATES, TaskRecord, TaskState, utcnow
from {{ cookiecutter.package_name }}.ledger.publish import publish_all
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
    stale = or_(
        *(
            and_(TaskRecord.state == state, TaskRecord.updated_at < now - age)
            for state, age in stale_after(settings).items()
        )
    )
    not_waiting = or_(TaskRecord.eta.is_(None), TaskRecord.eta < now)
    limit_reason = f"attempt limit {settings.ledger_max_attempts} reached"
    with session_scope() as session:
        candidates = session.scalars(
            select(TaskRecord)
            .where(stale, not_waiting)
            .order_by(TaskRecord.updated_at)
            .limit(settings.reconcile_batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        # Bounded both ways: too many starts (a poison task), or too many sends that never
        # started (nothing consumes its queue).
        exhausted = {
            row.id
            for row in candidates
            if max(row.attempts, row.dispatches) >= settings.ledger_max_attempts
        }
        to_bury = _claim(
            session,
            [row for row in candidates if row.id in exhausted],
            now,
            state=TaskState.DEAD,
            finished_at=now,
            last_error=limit_reason,
        )
        to_publish = _claim(
            session,
            [row for row in candidates if row.id not in exhausted],
            now,
            state=TaskState.QUEUED,
        )
    for event, rows in (("reconcile_dead", to_bury), ("reconcile_redispatch", to_publish)):
        for row in rows:
            logger.warning(
                "reconcile: task stalled",
                extra={
                    "event": event,
                    "task_id": row.id,
                    "task_name": row.name,
                    "stalled_state": row.state,
                    "attempts": row.attempts,
                },
            )
    for row in to_publish:
        row.state = TaskState.QUEUED
    report = ReconcileReport(redispatched=[row.id for row in publish_all(app, to_publish)])
    for row in to_bury:
        send_to_dead_queue(app, row.id, row.name, row.kwargs, limit_reason)
        report.dead.append(row.id)
    return report


def _claim(
    session: Session, rows: Sequence[TaskRecord], now: datetime, **values: object
) -> list[TaskRecord]:
    """Compare-and-set the rows still as they were read (state, updated_at); those changed.

    One UPDATE for all of them, then one read of which rows it changed: this pass's `now`
    in updated_at marks them, on every dialect, RETURNING or not.
    """
    if not rows:
        return []
    as_read = [(row.id, row.state, row.updated_at) for row in rows]
    session.execute(
        update(TaskRecord)
        .where(tuple_(TaskRecord.id, TaskRecord.state, TaskRecord.updated_at).in_(as_read))
        .values(updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    changed = set(
        session.scalars(
            select(TaskRecord.id).where(
                TaskRecord.id.in_([row.id for row in rows]), TaskRecord.updated_at == now
            )
        )
    )
    return [row for row in rows if row.id in changed]


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
