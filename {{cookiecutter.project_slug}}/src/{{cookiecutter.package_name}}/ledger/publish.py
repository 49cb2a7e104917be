"""Hand ledger rows to the broker after their transaction commits (R33, R17).

`enqueue()` adds a QUEUED row to the caller's session; once that session's transaction
has committed and given its connection back, the message is published and the row
marked PUBLISHED in one autocommit statement, so a submission never holds two pooled
connections. A rollback publishes nothing. A publish that fails leaves the row QUEUED,
durable, for the reconcile job to retry.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict, Unpack

from celery import Celery
from celery.result import denied_join_result
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.attributes import set_committed_value

from {{ cookiecutter.package_name }}.broker_errors import BROKER_ERRORS
from {{ cookiecutter.package_name }}.ledger import statements
from {{ cookiecutter.package_name }}.ledger.db import retry_on_disconnect, single_statement
from {{ cookiecutter.package_name }}.ledger.models import TaskRecord, TaskState, utcnow
from {{ cookiecutter.package_name }}.sent_events import sent_events

logger = logging.getLogger(__name__)

# A message sent again for a row that was published before: the worker checks the
# ledger before running it (tasks/request.py).
REDISPATCH_HEADER = "ledger_redispatch"
_PENDING = "ledger_pending_publish"  # added in the open transaction
_COMMITTED = "ledger_committed_publish"  # committed, published once the connection is back


class SendOptions(TypedDict, total=False):
    """How and where a task is sent; all optional."""

    queue: str | None
    countdown: float | None
    eta: datetime | None
    priority: int | None
    request_id: str | None
    replay_of: str | None
    submitted_by: str | None


def new_row(
    app: Celery, name: str, kwargs: dict[str, Any], **options: Unpack[SendOptions]
) -> dict[str, Any]:
    """The column values of a fresh QUEUED row (with its new task id)."""
    eta = options.get("eta")
    countdown = options.get("countdown")
    if countdown is not None:
        eta = utcnow() + timedelta(seconds=countdown)
    elif eta is not None and eta.tzinfo is not None:
        eta = eta.astimezone(UTC).replace(tzinfo=None)
    now = utcnow()
    return {
        "id": str(uuid.uuid4()),
        "name": name,
        "queue": options.get("queue") or app.amqp.router.route({}, name)["queue"].name,
        "args": [],
        "kwargs": kwargs,
        "priority": options.get("priority"),
        "eta": eta,
        "state": TaskState.QUEUED,
        "attempts": 0,
        "dispatches": 0,
        "request_id": options.get("request_id"),
        "replay_of": options.get("replay_of"),
        "submitted_by": options.get("submitted_by"),
        "created_at": now,
        "updated_at": now,
    }


def enqueue(
    session: Session,
    app: Celery,
    name: str,
    kwargs: dict[str, Any],
    **options: Unpack[SendOptions],
) -> TaskRecord:
    """Record a task in the caller's transaction; it is published once that commits."""
    record = TaskRecord(**new_row(app, name, kwargs, **options))
    session.add(record)
    session.info.setdefault(_PENDING, []).append((app, record))
    return record


# Not retried: a connection lost during the INSERT leaves it unknown whether the row
# landed, and the caller (503, nothing published) is the one to decide.
def _insert(row: dict[str, Any]) -> None:
    with single_statement() as connection:
        connection.execute(statements.INSERT, row)


def submit(
    app: Celery, name: str, kwargs: dict[str, Any], **options: Unpack[SendOptions]
) -> TaskRecord:
    """Record a task and publish it, outside any caller's transaction (the API's submit).

    The same guarantee as `enqueue` in a transaction of its own, for a third of the
    database work: one autocommit INSERT (durable when it returns), the publish, and
    one autocommit UPDATE to PUBLISHED, with no ORM unit of work.
    """
    row = new_row(app, name, kwargs, **options)
    _insert(row)
    record = TaskRecord(**row)
    publish(app, record)
    return record


def publish(app: Celery, record: TaskRecord) -> bool:
    """Send one row's message; mark it PUBLISHED. False (row stays QUEUED) if the broker is down."""
    return bool(publish_all(app, [record]))


def publish_all(app: Celery, records: Sequence[TaskRecord]) -> list[TaskRecord]:
    """Send each row's message, then mark every sent row PUBLISHED in one statement.

    Returns the rows sent. The first broker failure ends the run: the broker is down, and
    the rows not sent stay QUEUED for the reconcile job instead of each waiting out the
    publish retry policy.
    """
    sent: list[TaskRecord] = []
    for record in records:
        if not _send(app, record):
            break
        sent.append(record)
    if not sent:
        return sent
    try:
        _mark_published([record.id for record in sent])
    except SQLAlchemyError as exc:
        # Published but still QUEUED in the ledger: at worst the reconcile job sends them
        # again, and the worker's guard skips a copy of a task that has finished.
        logger.warning(
            "tasks published but not marked",
            extra={"task_ids": [record.id for record in sent], "error": str(exc)},
        )
        return sent
    for record in sent:
        # Not an ORM change: the row may still sit in the session that just committed it.
        set_committed_value(record, "state", TaskState.PUBLISHED)
    return sent


def _send(app: Celery, record: TaskRecord) -> bool:
    options: dict[str, Any] = {"queue": record.queue}
    if record.eta is not None:
        options["eta"] = record.eta.replace(tzinfo=None)
    if record.priority is not None:
        options["priority"] = record.priority
    headers: dict[str, Any] = {}
    if record.request_id:
        headers["request_id"] = record.request_id
    if record.dispatches:
        headers[REDISPATCH_HEADER] = True
    if headers:
        options["headers"] = headers
    try:
        # Nothing here waits on the result: skip the result-channel subscription, which
        # would run outside the publish retry policy.
        with denied_join_result():
            app.send_task(
                record.name,
                kwargs=record.kwargs,
                task_id=record.id,
                event_dispatcher=sent_events(app),
                **options,
            )
    except BROKER_ERRORS as exc:
        logger.warning(
            "broker unavailable; the reconcile job will publish the task",
            extra={"task_id": record.id, "task_name": record.name, "error": str(exc)},
        )
        return False
    return True


@retry_on_disconnect
def _mark_published(task_ids: list[str]) -> None:
    with single_statement() as connection:
        connection.execute(statements.MARK_PUBLISHED, {"task_ids": task_ids, "now": utcnow()})


@event.listens_for(Session, "after_commit")
def _keep_committed(session: Session) -> None:
    # Still inside commit(): the session's connection is not back in the pool yet.
    session.info.setdefault(_COMMITTED, []).extend(session.info.pop(_PENDING, []))


@event.listens_for(Session, "after_transaction_end")
def _publish_committed(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction is over and its connection returned: publish now.
    if transaction.parent is None:
        committed = session.info.pop(_COMMITTED, [])
        for app in dict.fromkeys(app for app, _ in committed):
            publish_all(app, [record for owner, record in committed if owner is app])


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(_COMMITTED, None)
