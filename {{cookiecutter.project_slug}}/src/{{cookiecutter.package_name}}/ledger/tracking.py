"""The worker's side of the ledger: claim on start, record the outcome (R21, R33).

Called from the task base class and the worker's request class; rows that are not in
the ledger (chord members, tasks sent directly) are simply not tracked.
"""

from __future__ import annotations

import logging
from enum import Enum

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from {{ cookiecutter.package_name }}.ledger.db import changed_rows, session_scope
from {{ cookiecutter.package_name }}.ledger.models import FINAL_STATES, TaskRecord, TaskState, utcnow

logger = logging.getLogger(__name__)


class Claim(Enum):
    UNTRACKED = "untracked"  # no ledger row: run without tracking
    FINAL = "final"  # already finished: never run again
    RUN = "run"


def is_final(task_id: str) -> bool:
    """True when the row says the task is done; False if unknown or the DB is down."""
    try:
        with session_scope() as session:
            state = session.scalar(select(TaskRecord.state).where(TaskRecord.id == task_id))
    except SQLAlchemyError as exc:
        logger.warning("ledger unreachable; not deduplicating", extra={"error": str(exc)})
        return False
    return state in FINAL_STATES


def claim(task_id: str, worker: str | None) -> tuple[Claim, int]:
    """Mark the row STARTED and count the attempt, unless it already finished."""
    with session_scope() as session:
        claimed = changed_rows(
            session,
            update(TaskRecord)
            .where(TaskRecord.id == task_id, TaskRecord.state.not_in(FINAL_STATES))
            .values(
                state=TaskState.STARTED,
                attempts=TaskRecord.attempts + 1,
                started_at=utcnow(),
                worker=worker,
            ),
        )
        row = session.execute(
            select(TaskRecord.state, TaskRecord.attempts).where(TaskRecord.id == task_id)
        ).one_or_none()
    if row is None:
        return Claim.UNTRACKED, 0
    return (Claim.RUN if claimed else Claim.FINAL), row.attempts


def record_outcome(task_id: str, state: TaskState, error: str | None = None) -> None:
    """Best effort: a ledger outage must not turn a finished task into a failed one."""
    try:
        with session_scope() as session:
            mark(session, task_id, state, error)
    except SQLAlchemyError as exc:
        logger.error(
            "ledger unreachable; outcome not recorded (the reconcile job will catch up)",
            extra={"task_id": task_id, "state": state, "error": str(exc)},
        )


def mark(session: Session, task_id: str, state: TaskState, error: str | None = None) -> bool:
    """Move a row to `state` inside the caller's transaction (never out of a final state).

    Returns False when the row is already final (or absent). The UPDATE waits for a
    concurrent transaction on the same row, so of two copies finishing at once exactly
    one sees True.
    """
    values: dict[str, object] = {"state": state}
    if error is not None:
        values["last_error"] = error[:4000]
    if state in FINAL_STATES:
        values["finished_at"] = utcnow()
    changed = changed_rows(
        session,
        update(TaskRecord)
        .where(TaskRecord.id == task_id, TaskRecord.state.not_in(FINAL_STATES))
        .values(**values),
    )
    return changed > 0


def attempts_of(task_id: str) -> int:
    """How many times the task has started (0 if it is not in the ledger)."""
    with session_scope() as session:
        attempts = session.scalar(select(TaskRecord.attempts).where(TaskRecord.id == task_id))
    return int(attempts or 0)


def is_tracked(session: Session, task_id: str) -> bool:
    return session.scalar(select(TaskRecord.id).where(TaskRecord.id == task_id)) is not None
