"""The worker's side of the ledger: claim on start, record the outcome (R21, R33).

Called from the task base class and the worker's request class; rows that are not in
the ledger (chord members, tasks sent directly) are simply not tracked. Each call is one
autocommit statement on the hot path (two where the dialect has no UPDATE … RETURNING).
"""

from __future__ import annotations

import logging
from enum import Enum

from sqlalchemy import Connection, Executable, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from {{ cookiecutter.package_name }}.ledger import statements
from {{ cookiecutter.package_name }}.ledger.db import changed_rows, retry_on_disconnect, single_statement
from {{ cookiecutter.package_name }}.ledger.error_text import clean
from {{ cookiecutter.package_name }}.ledger.heartbeats import INCARNATION
from {{ cookiecutter.package_name }}.ledger.models import FINAL_STATES, TaskRecord, TaskState, utcnow

logger = logging.getLogger(__name__)


class Claim(Enum):
    UNTRACKED = "untracked"  # no ledger row: run without tracking
    FINAL = "final"  # already finished: never run again
    HELD = "held"  # a live worker runs it now: this is a copy, never run beside it
    RUN = "run"


@retry_on_disconnect
def _state_of(task_id: str) -> str | None:
    with single_statement() as connection:
        return connection.scalar(statements.STATE, {"task_id": task_id})


def is_final(task_id: str) -> bool:
    """True when the row says the task is done; False if unknown or the DB is down."""
    try:
        state = _state_of(task_id)
    except SQLAlchemyError as exc:
        logger.warning("ledger unreachable; not deduplicating", extra={"error": str(exc)})
        return False
    return state in FINAL_STATES


@retry_on_disconnect
def claim(task_id: str, worker: str | None, retry_of: int | None = None) -> tuple[Claim, int]:
    """Mark the row STARTED for this process and count the attempt.

    Not when it already finished, nor while a live run holds it (statements.LIVE_CLAIM),
    unless this is the retry that run sent (`retry_of`, its attempt: it has ended).
    """
    params = {
        "task_id": task_id,
        "worker": worker,
        "incarnation": INCARNATION,
        "retry_of": retry_of,
    }
    with single_statement() as connection:
        if connection.dialect.update_returning:
            attempts = connection.scalar(
                statements.CLAIM.returning(statements.LEDGER.c.attempts), params
            )
        elif changed_rows(connection, statements.CLAIM, params):
            attempts = connection.scalar(statements.ATTEMPTS, params)
        else:
            attempts = None
        if attempts is not None:
            return Claim.RUN, attempts
        # Not claimed: finished, held by a live run, or not in the ledger at all.
        row = connection.execute(statements.STATE_AND_ATTEMPTS, params).first()
    if row is None:
        return Claim.UNTRACKED, 0
    return (Claim.FINAL if row.state in FINAL_STATES else Claim.HELD), row.attempts


def record_retry(task_id: str, error: str, delay: float) -> None:
    """RETRY, due in `delay` seconds: written before the retry message is sent."""
    params = {"task_id": task_id, "error": clean(error), "delay": delay, "incarnation": INCARNATION}
    try:
        with single_statement() as connection:
            connection.execute(statements.MARK_RETRY, params)
    except SQLAlchemyError as exc:
        logger.error(
            "ledger unreachable; retry not recorded (the reconcile job will catch up)",
            extra={"task_id": task_id, "error": str(exc)},
        )


def release(task_id: str) -> None:
    """The pool process running the task died: its requeued message may run at once."""
    _free(statements.RELEASE, task_id)


def requeue(task_id: str) -> None:
    """Celery cancelled the run (broker connection lost): PUBLISHED again, free to claim;
    the reconcile job re-sends it if its message was lost with a failed master."""
    _free(statements.REQUEUE, task_id)


def _free(statement: Executable, task_id: str) -> None:
    try:
        with single_statement() as connection:
            connection.execute(statement, {"task_id": task_id, "owner": INCARNATION})
    except SQLAlchemyError as exc:
        # A returning copy is then refused as HELD, and the row waits for the reconcile
        # job's rule for stale STARTED rows.
        logger.error(
            "ledger unreachable; claim not released",
            extra={"task_id": task_id, "error": str(exc)},
        )


@retry_on_disconnect
def _record(task_id: str, state: TaskState, error: str | None) -> None:
    with single_statement() as connection:
        mark(connection, task_id, state, error)


def record_outcome(task_id: str, state: TaskState, error: str | None = None) -> None:
    """Best effort: a ledger outage must not turn a finished task into a failed one."""
    try:
        _record(task_id, state, error)
    except SQLAlchemyError as exc:
        logger.error(
            "ledger unreachable; outcome not recorded (the reconcile job will catch up)",
            extra={"task_id": task_id, "state": state, "error": str(exc)},
        )


def mark(
    session: Session | Connection, task_id: str, state: TaskState, error: str | None = None
) -> bool:
    """Move a row to `state` inside the caller's transaction (never out of a final state).

    Returns False when the row is already final (or absent). The UPDATE waits for a
    concurrent transaction on the same row, so of two copies finishing at once exactly
    one sees True.
    """
    params = {
        "task_id": task_id,
        "state": state,
        "error": None if error is None else clean(error),
        "finished_at": utcnow() if state in FINAL_STATES else None,
    }
    return changed_rows(session, statements.MARK, params) > 0


def attempts_of(task_id: str) -> int:
    """How many times the task has started (0 if it is not in the ledger)."""
    with single_statement() as connection:
        attempts = connection.scalar(statements.ATTEMPTS, {"task_id": task_id})
    return int(attempts or 0)


def is_tracked(session: Session, task_id: str) -> bool:
    return session.scalar(select(TaskRecord.id).where(TaskRecord.id == task_id)) is not None
