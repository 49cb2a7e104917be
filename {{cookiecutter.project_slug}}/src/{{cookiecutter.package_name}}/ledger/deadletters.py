"""Dead letters (R14): final failures, listed and replayed from the ledger.

Redis has no dead-letter exchange, so a DEAD task is two things: its ledger row (the
truth, with the error and attempt count) and a copy of its message on the `dead` queue,
which no worker consumes unless an operator starts one with `-Q dead`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.result import denied_join_result
from sqlalchemy import select
from sqlalchemy.orm import Session

from {{ cookiecutter.package_name }}.ledger.models import TaskRecord, TaskState
from {{ cookiecutter.package_name }}.ledger.publish import BROKER_ERRORS, enqueue
from {{ cookiecutter.package_name }}.queues import DEAD_QUEUE

logger = logging.getLogger(__name__)

REPLAYABLE_STATES = (TaskState.DEAD, TaskState.FAILED)


class NotReplayable(Exception):
    """The task is unknown or did not end in DEAD/FAILED."""


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


def replay(session: Session, app: Celery, task_id: str) -> TaskRecord:
    """A fresh attempt under a new id; the dead row is kept as history (`replay_of`)."""
    dead = session.get(TaskRecord, task_id)
    if dead is None or dead.state not in REPLAYABLE_STATES:
        state = "unknown" if dead is None else dead.state
        raise NotReplayable(f"task {task_id} is {state}; only DEAD or FAILED tasks replay")
    return enqueue(
        session,
        app,
        dead.name,
        dead.kwargs,
        queue=dead.queue,
        priority=dead.priority,
        replay_of=dead.id,
    )
