"""Hand ledger rows to the broker after their transaction commits (R33, R17).

`enqueue()` adds a QUEUED row to the caller's session; when that session commits, the
message is published and the row marked PUBLISHED. A rollback publishes nothing. A
publish that fails leaves the row QUEUED, durable, for the reconcile job to retry.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from celery.result import denied_join_result
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from sqlalchemy import event, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from {{ cookiecutter.package_name }}.ledger.db import session_scope
from {{ cookiecutter.package_name }}.ledger.models import TaskRecord, TaskState, utcnow

logger = logging.getLogger(__name__)

# What a publish raises once task_publish_retry_policy is exhausted.
BROKER_ERRORS = (OperationalError, RedisError, OSError)
_PENDING = "ledger_pending_publish"


def enqueue(
    session: Session,
    app: Celery,
    name: str,
    kwargs: dict[str, Any],
    *,
    queue: str | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    priority: int | None = None,
    request_id: str | None = None,
    replay_of: str | None = None,
) -> TaskRecord:
    """Record a task in the caller's transaction; it is published once that commits."""
    if countdown is not None:
        eta = utcnow() + timedelta(seconds=countdown)
    elif eta is not None and eta.tzinfo is not None:
        eta = eta.astimezone(UTC).replace(tzinfo=None)
    record = TaskRecord(
        id=str(uuid.uuid4()),
        name=name,
        queue=queue or app.amqp.router.route({}, name)["queue"].name,
        args=[],
        kwargs=kwargs,
        priority=priority,
        eta=eta,
        state=TaskState.QUEUED,
        attempts=0,
        dispatches=0,
        request_id=request_id,
        replay_of=replay_of,
    )
    session.add(record)
    session.info.setdefault(_PENDING, []).append((app, record))
    return record


def publish(app: Celery, record: TaskRecord) -> bool:
    """Send one row's message; mark it PUBLISHED. False (row stays QUEUED) if the broker is down."""
    options: dict[str, Any] = {"queue": record.queue}
    if record.eta is not None:
        options["eta"] = record.eta.replace(tzinfo=None)
    if record.priority is not None:
        options["priority"] = record.priority
    if record.request_id:
        options["headers"] = {"request_id": record.request_id}
    try:
        # Nothing here waits on the result: skip the result-channel subscription, which
        # would run outside the publish retry policy.
        with denied_join_result():
            app.send_task(record.name, kwargs=record.kwargs, task_id=record.id, **options)
    except BROKER_ERRORS as exc:
        logger.warning(
            "broker unavailable; the reconcile job will publish the task",
            extra={"task_id": record.id, "task_name": record.name, "error": str(exc)},
        )
        return False
    try:
        with session_scope() as session:
            session.execute(
                update(TaskRecord)
                .where(TaskRecord.id == record.id, TaskRecord.state == TaskState.QUEUED)
                .values(
                    state=TaskState.PUBLISHED,
                    published_at=utcnow(),
                    dispatches=TaskRecord.dispatches + 1,
                )
            )
    except SQLAlchemyError as exc:
        # Published but still QUEUED in the ledger: at worst the reconcile job sends it
        # again, and the worker's guard skips it once it has finished.
        logger.warning(
            "task published but not marked", extra={"task_id": record.id, "error": str(exc)}
        )
        return True
    record.state = TaskState.PUBLISHED
    return True


@event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    for app, record in session.info.pop(_PENDING, []):
        publish(app, record)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)
