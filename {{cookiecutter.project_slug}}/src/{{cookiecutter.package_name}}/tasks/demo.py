"""Example tasks: replace them with your own; tests and benchmarks use them as they are.

Arguments are JSON basic types with bounds (R07): the API validates against these
signatures, and a task loads anything bigger (rows, files) by ID inside itself.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
from typing import Annotated

from pydantic import Field

from {{ cookiecutter.package_name }}.celery_app import reliable_app
from {{ cookiecutter.package_name }}.ledger.db import session_scope
from {{ cookiecutter.package_name }}.ledger.models import EFFECT_KEY_LENGTH, DemoEffect
from {{ cookiecutter.package_name }}.ledger.tracking import attempts_of
from {{ cookiecutter.package_name }}.settings import get_settings
from {{ cookiecutter.package_name }}.tasks.base import ReliableTask
from {{ cookiecutter.package_name }}.tasks.errors import RetryableError

_settings = get_settings()
# Waits may outlast the time limits: the chaos tier shows the limits cutting them short.
Seconds = Annotated[float, Field(ge=0, le=600)]
# A retry's countdown stays within the backoff cap the visibility timeout is checked against.
Countdown = Annotated[float, Field(ge=0, le=_settings.task_retry_backoff_max)]
Attempts = Annotated[int, Field(ge=0, le=20)]
Text = Annotated[str, Field(max_length=10_000)]
# A key is stored in demo_effects.key: no longer than that column.
Key = Annotated[str, Field(min_length=1, max_length=EFFECT_KEY_LENGTH)]

# R08: every task has an explicit, stable name; routes and the API allowlist use it.


@reliable_app.task(name="demo.echo", bind=True)
def echo(self: ReliableTask, message: Text) -> str:
    """Return the input unchanged: the cheapest end-to-end check."""
    return message


@reliable_app.task(name="demo.sleep", bind=True)
def sleep(self: ReliableTask, seconds: Seconds) -> float:
    """Sleep in small steps, reporting progress (R23) and honouring abort requests (R24).

    Progress is reported between steps: before the first, STARTED says as much, and after
    the last the result does.
    """
    step = 0.1
    started = time.monotonic()
    steps = max(1, round(seconds / step))
    for done in range(1, steps + 1):
        self.stop_if_aborted()
        time.sleep(seconds / steps)
        if done < steps:
            self.report_progress(done, steps)
    return round(time.monotonic() - started, 3)


@reliable_app.task(name="demo.flaky", bind=True)
def flaky(self: ReliableTask, failures: Attempts) -> int:
    """Fail `failures` times with a transient error, then succeed (automatic retry, R12)."""
    if self.request.retries < failures:
        raise RetryableError(f"transient failure {self.request.retries + 1} of {failures}")
    return self.request.retries


@reliable_app.task(name="demo.retry_later", bind=True)
def retry_later(self: ReliableTask, failures: Attempts, countdown: Countdown) -> int:
    """Fail `failures` times and reschedule itself explicitly (manual retry, R13)."""
    if self.request.retries < failures:
        error = RetryableError(f"not ready yet ({self.request.retries + 1} of {failures})")
        raise self.retry(exc=error, countdown=countdown)
    return self.request.retries


@reliable_app.task(name="demo.fail", bind=True)
def fail(self: ReliableTask, reason: Text = "always fails") -> None:
    """Fail on every attempt: retries run out and the task ends failed (R14)."""
    raise RetryableError(reason)


@reliable_app.task(name="demo.record_effect", bind=True)
def record_effect(self: ReliableTask, key: Key, seconds: Seconds = 0.0) -> str:
    """Wait, then write one side-effect row together with the ledger's SUCCEEDED (R21).

    The row and the state commit in one transaction, so a redelivery after a crash
    either finds no row (and writes it) or finds the task finished (and is skipped).
    """
    time.sleep(seconds)
    with session_scope() as session:
        session.add(DemoEffect(task_id=str(self.request.id), key=key))
        self.finish_in(session)
    return key


@reliable_app.task(name="demo.crash", bind=True)
def crash(self: ReliableTask, until_attempt: Attempts = 20) -> int:
    """Kill the process running it until its ledger attempt reaches `until_attempt`.

    A stand-in for an out-of-memory kill or a segfault: a prefork child dies mid-task
    (R02 requeues it); one that always dies is a poison task the attempt limit buries
    (R14). Not in the default API allowlist.
    """
    attempt = attempts_of(str(self.request.id))
    if attempt < until_attempt:
        os.kill(os.getpid(), signal.SIGKILL)
    return attempt


@reliable_app.task(name="demo.urgent_ping", bind=True)
def urgent_ping(self: ReliableTask) -> str:
    """A cheap task routed to the high queue by name (R10); beat's interval entry."""
    return datetime.now(UTC).isoformat()


@reliable_app.task(name="demo.notify", bind=True, ignore_result=True)
def notify(self: ReliableTask, message: Text) -> None:
    """Fire-and-forget: stores no result at all (R25, task_ignore_result per task)."""
    self.report_progress(1, 1)
