"""Reconcile (R34): re-dispatch rows that stalled or lost their worker, bounded by the
attempt limit; prune.

Two ways a row is found:
- `reconcile`, run by beat: rows unfinished for longer than their state allows, the
  safety net under everything (a message lost in a failover, a publish that failed);
- `rescue_orphans`, run by every worker every half heartbeat interval
  (worker_liveness.py): STARTED or due RETRY rows whose claiming process stopped beating
  (heartbeats.py), found within WORKER_DEAD_AFTER, whatever the visibility timeout.

Safe to run concurrently with itself: candidate rows are read with SKIP LOCKED where
the dialect has it, and each row is claimed by a compare-and-set on (state, updated_at),
so two runs never both re-dispatch the same row (SQLite included). A copy that is sent
anyway (the old message restored later by kombu) is refused by the worker's claim while
the new run holds the row, and skipped once it finished (statements.CLAIM).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import ColumnElement, and_, delete, not_, or_, select, tuple_, update
from sqlalchemy.orm import Session

from {{ cookiecutter.package_name }}.ledger import heartbeats, statements
from {{ cookiecutter.package_name }}.ledger.clock import database_now
from {{ cookiecutter.package_name }}.ledger.db import changed_rows, session_scope
from {{ cookiecutter.package_name }}.ledger.deadletters import send_to_dead_queue
from {{ cookiecutter.package_name }}.ledger.models import (
    FINAL_STATES,
    Recovery,
    RecoveryCount,
    TaskRecord,
    TaskState,
    utcnow,
)
from {{ cookiecutter.package_name }}.ledger.publish import publish_all
from {{ cookiecutter.package_name }}.settings import Settings

logger = logging.getLogger(__name__)

STALE = {
    TaskState.QUEUED: Recovery.STALE_QUEUED,
    TaskState.PUBLISHED: Recovery.STALE_PUBLISHED,
    TaskState.STARTED: Recovery.STALE_STARTED,
    TaskState.RETRY: Recovery.STALE_RETRY,
}


@dataclass
class ReconcileReport:
    redispatched: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    causes: Counter[Recovery] = field(default_factory=Counter)


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
    cause = lambda row: STALE[TaskState(row.state)]  # noqa: E731
    return _recover(app, settings, and_(stale, not_waiting), cause, now)


def rescue_orphans(
    app: Celery, settings: Settings, incarnations: Collection[str] | None = None
) -> ReconcileReport:
    """Re-dispatch what dead worker processes were running (or were due to retry).

    Without `incarnations`: rows whose claiming process has no heartbeat fresher than
    WORKER_DEAD_AFTER. With them (a restarted worker's predecessors, just superseded):
    those processes' rows, at once.
    """
    if incarnations is None:
        owner_gone, cause = not_(statements.OWNER_BEATS), Recovery.WORKER_LOST
    else:
        owner_gone, cause = TaskRecord.incarnation.in_(incarnations), Recovery.WORKER_RESTARTED
    # A RETRY row waits for its due time: its message may sit in a live worker until then.
    running_or_due = or_(
        TaskRecord.state == TaskState.STARTED,
        and_(
            TaskRecord.state == TaskState.RETRY,
            or_(TaskRecord.eta.is_(None), TaskRecord.eta < database_now()),
        ),
    )
    orphaned = and_(TaskRecord.incarnation.is_not(None), running_or_due, owner_gone)
    return _recover(app, settings, orphaned, lambda _: cause, utcnow())


def _recover(
    app: Celery,
    settings: Settings,
    where: ColumnElement[bool],
    cause_of: Callable[[TaskRecord], Recovery],
    now: datetime,
) -> ReconcileReport:
    """Claim the rows `where` selects; bury those out of attempts, send the others again."""
    limit_reason = f"attempt limit {settings.ledger_max_attempts} reached"
    with session_scope() as session:
        candidates = session.scalars(
            select(TaskRecord)
            .where(where)
            .order_by(TaskRecord.updated_at)
            .limit(settings.reconcile_batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        causes = {row.id: cause_of(row) for row in candidates}
        # Bounded both ways: too many starts (a poison task), or too many sends that never
        # started (nothing consumes its queue).
        exhausted = [
            row
            for row in candidates
            if max(row.attempts, row.dispatches) >= settings.ledger_max_attempts
        ]
        to_bury = _claim(
            session, exhausted, now, state=TaskState.DEAD, finished_at=now, last_error=limit_reason
        )
        others = [row for row in candidates if row not in exhausted]
        to_publish = _claim(session, others, now, state=TaskState.QUEUED, incarnation=None)
        report = ReconcileReport(causes=Counter(causes[row.id] for row in to_publish))
        _count(session, report.causes)
    _log_stalled("reconcile_dead", to_bury, causes)
    _log_stalled("reconcile_redispatch", to_publish, causes)
    report.redispatched = _redispatch(app, to_publish)
    report.dead = _bury(app, to_bury, limit_reason)
    return report


def _log_stalled(event: str, rows: Sequence[TaskRecord], causes: dict[str, Recovery]) -> None:
    for row in rows:
        logger.warning(
            "reconcile: task stalled",
            extra={
                "event": event,
                "cause": causes[row.id],
                "task_id": row.id,
                "task_name": row.name,
                "stalled_state": row.state,
                "attempts": row.attempts,
            },
        )


def _redispatch(app: Celery, rows: Sequence[TaskRecord]) -> list[str]:
    """Rows claimed back to QUEUED: publish them again; the ids that reached the broker."""
    for row in rows:
        row.state = TaskState.QUEUED
    return [row.id for row in publish_all(app, rows)]


def _bury(app: Celery, rows: Sequence[TaskRecord], reason: str) -> list[str]:
    """Rows claimed DEAD, out of attempts: a copy of each goes to the dead queue (R14)."""
    for row in rows:
        send_to_dead_queue(app, row.id, row.name, row.kwargs, reason)
    return [row.id for row in rows]


def _count(session: Session, causes: Counter[Recovery]) -> None:
    """Add this pass's re-dispatches to the counters (rows seeded by the migration)."""
    for cause, count in causes.items():
        session.execute(
            update(RecoveryCount)
            .where(RecoveryCount.cause == cause)
            .values(count=RecoveryCount.count + count)
        )


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
    gone = heartbeats.prune()
    logger.info(
        "ledger pruned",
        extra={"event": "ledger_pruned", "deleted": deleted, "heartbeats_deleted": gone},
    )
    return int(deleted)
