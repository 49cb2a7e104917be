"""Turn a validated submission into a ledger row and a published message (R05, R17, R33).

The row is committed first (one autocommit INSERT); the message is published after it. If the broker
cannot take it the row stays QUEUED (durable; the reconcile job publishes it later) and
the API still answers 202. If the database cannot take the row, nothing is published
and the API answers 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from {{ cookiecutter.package_name }}.api.admission import Backlog
from {{ cookiecutter.package_name }}.api.catalog import SubmissionRejected, TaskCatalog
from {{ cookiecutter.package_name }}.api.schemas import TaskSubmission
from {{ cookiecutter.package_name }}.ledger.db import session_scope
from {{ cookiecutter.package_name }}.ledger.models import TaskRecord
from {{ cookiecutter.package_name }}.ledger.publish import submit
from {{ cookiecutter.package_name }}.settings import Settings

__all__ = ["BrokerUnavailable", "LedgerUnavailable", "dispatch", "ledger_session"]


class BrokerUnavailable(Exception):
    """Redis (broker or result backend) did not answer: 503."""


class LedgerUnavailable(Exception):
    """The ledger database did not answer: 503 (and on submit, nothing was published)."""


@contextmanager
def ledger_errors() -> Iterator[None]:
    """Database errors inside the block become LedgerUnavailable (503)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise LedgerUnavailable(f"ledger database unreachable: {type(exc).__name__}") from exc


@contextmanager
def ledger_session() -> Iterator[Session]:
    """A ledger transaction whose database errors become LedgerUnavailable (503)."""
    with ledger_errors(), session_scope() as session:
        yield session


def dispatch(
    app: Celery,
    catalog: TaskCatalog,
    backlog: Backlog,
    settings: Settings,
    submission: TaskSubmission,
    *,
    request_id: str | None,
    submitted_by: str,
) -> TaskRecord:
    """Validate, admit (the queue's backlog), then write the row and publish after it."""
    task = catalog.task(submission.name)
    kwargs = catalog.validate(submission.name, submission.args, submission.kwargs)
    queue = catalog.queue(task.name, submission.queue)
    _refuse_long_delays(submission, settings)
    backlog.admit(queue)
    with ledger_errors():
        return submit(
            app,
            task.name,
            kwargs,
            queue=queue,
            submitted_by=submitted_by,
            countdown=submission.countdown,
            eta=submission.eta,
            priority=submission.priority,
            request_id=request_id,
        )


def _refuse_long_delays(submission: TaskSubmission, settings: Settings) -> None:
    """R05: a delayed message waits unacked in a worker; past the VT it is redelivered."""
    if submission.countdown is not None:
        delay = submission.countdown
    elif submission.eta is not None:
        delay = (submission.eta - datetime.now(UTC)).total_seconds()
    else:
        return
    if delay > settings.max_countdown:
        raise SubmissionRejected(
            f"a delay of {delay:.0f} s exceeds the {settings.max_countdown} s a message may"
            " wait unacknowledged (visibility timeout minus time limit); schedule longer"
            " delays with beat"
        )
