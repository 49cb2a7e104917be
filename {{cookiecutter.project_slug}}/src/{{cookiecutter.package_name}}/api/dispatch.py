"""Hand a validated submission to the broker, or say honestly why it was not (R05, R17)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from {{ cookiecutter.package_name }}.api.catalog import SubmissionRejected, TaskCatalog
from {{ cookiecutter.package_name }}.api.schemas import TaskSubmission
from {{ cookiecutter.package_name }}.settings import Settings

# What a publish raises once task_publish_retry_policy is exhausted.
BROKER_ERRORS = (OperationalError, RedisError, OSError)


class BrokerUnavailable(Exception):
    """The broker (or result backend) could not take the message: answered with 503."""


@dataclass(frozen=True)
class Dispatched:
    id: str
    name: str
    queue: str


def dispatch(
    app: Celery,
    catalog: TaskCatalog,
    settings: Settings,
    submission: TaskSubmission,
    request_id: str | None,
) -> Dispatched:
    task = catalog.task(submission.name)
    kwargs = catalog.validate(submission.name, submission.args, submission.kwargs)
    _refuse_long_delays(submission, settings)
    queue = submission.queue or app.amqp.router.route({}, task.name)["queue"].name
    task_id = str(uuid.uuid4())
    options: dict[str, Any] = {
        "countdown": submission.countdown,
        "eta": submission.eta,
        "priority": submission.priority,
        # Carried into the worker's logs, linking a task to the request that made it.
        "headers": {"request_id": request_id} if request_id else None,
    }
    try:
        task.apply_async(
            kwargs=kwargs,
            task_id=task_id,
            queue=queue,
            **{name: value for name, value in options.items() if value is not None},
        )
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(
            f"broker unreachable after {settings.publish_retry_max_retries} publish retries:"
            f" {type(exc).__name__}: {exc}"
        ) from exc
    return Dispatched(id=task_id, name=task.name, queue=queue)


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
