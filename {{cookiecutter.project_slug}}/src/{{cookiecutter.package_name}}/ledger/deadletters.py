"""Dead letters (R14): final failures, listed and replayed from the ledger.

Redis has no dead-letter exchange, so a DEAD task is two things: its ledger row (the
truth, with the error and attempt count) and a copy of its message on the `dead` queue,
which no worker consumes unless an operator starts one with `-Q dead`.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Sequence
from typing import Any

from celery import Celery
from celery.result import denied_join_result
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from {{ cookiecutter.package_name }}.broker_errors import BROKER_ERRORS
from {{ cookiecutter.package_name }}.ledger.models import TaskRecord, TaskState
from {{ cookiecutter.package_name }}.ledger.publish import enqueue
from {{ cookiecutter.package_name }}.queues import DEAD_QUEUE

logger = logging.getLogger(__name__)

REPLAYABLE_STATES = (TaskState.DEAD, TaskState.FAILED)


class UnknownTask(LookupError):
    """No ledger row has this id."""


class NotReplayable(Exception):
    """The task did not end in DEAD/FAILED."""


class NotAllowed(Exception):
    """The caller may not run this task (it is not in the allowlist it gave)."""


def send_to_dead_queue(
    app: Celery, task_id: str, name: str, kwargs: dict[str, Any], reason: str
) -> None:
    """Park a copy of the message on the dead queue; the ledger row stays the truth."""
    try:
        with denied_join_result():
            app.send_task(
                name,
                kwargs=kwargs,
                task_id=task_id,
                queue=DEAD_QUEUE,
                headers={"dead_letter_reason": reason[:500]},
            )
    except BROKER_ERRORS as exc:
        logger.error(
            "dead-letter message not published (the ledger row is DEAD)",
            extra={"task_id": task_id, "error": str(exc)},
        )


def list_dead(session: Session, limit: int = 50, offset: int = 0) -> Sequence[TaskRecord]:
    return session.scalars(
        select(TaskRecord)
        .where(TaskRecord.state.in_(REPLAYABLE_STATES))
        .order_by(TaskRecord.finished_at.desc(), TaskRecord.id)
        .limit(limit)
        .offset(offset)
    ).all()


def replay(
    session: Session,
    app: Celery,
    task_id: str,
    *,
    allowed: Container[str] | None = None,
    submitted_by: str | None = None,
) -> TaskRecord:
    """A fresh attempt under a new id; the dead row is kept as history (`replay_of`).

    Idempotent: the dead row is locked while it is looked at, so of concurrent replays
    one creates the new run and the others get that same run back (SQLite serialises its
    writers instead). `allowed`: the task names the caller may run (the API's allowlist).
    """
    if session.get_bind().dialect.name == "sqlite":
        # No row locks in SQLite (FOR UPDATE is dropped): a no-op UPDATE as the first
        # statement takes its one write lock, so concurrent replays run one after another.
        session.execute(
            update(TaskRecord)
            .where(TaskRecord.id == task_id)
            .values(updated_at=TaskRecord.updated_at)
            .execution_options(synchronize_session=False)
        )
    dead = session.scalars(
        select(TaskRecord).where(TaskRecord.id == task_id).with_for_update()
    ).one_or_none()
    if dead is None:
        raise UnknownTask(f"no task with id {task_id}")
    if dead.state not in REPLAYABLE_STATES:
        raise NotReplayable(f"task {task_id} is {dead.state}; only DEAD or FAILED tasks replay")
    if allowed is not None and dead.name not in allowed:
        raise NotAllowed(f"task {dead.name!r} is not in the API's allowlist; replay it by hand")
    earlier = session.scalars(
        select(TaskRecord).where(TaskRecord.replay_of == dead.id).order_by(TaskRecord.created_at)
    ).first()
    if earlier is not None:
        return earlier
    return enqueue(
        session,
        app,
        dead.name,
        dead.kwargs,
        queue=dead.queue,
        priority=dead.priority,
        replay_of=dead.id,
        submitted_by=submitted_by,
    )
