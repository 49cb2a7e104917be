"""The base class of every task: retries, hooks, progress and abort (R12-R15, R23, R24)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import Task
from celery.exceptions import Ignore
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from {{ cookiecutter.package_name }}.ledger.deadletters import send_to_dead_queue
from {{ cookiecutter.package_name }}.ledger.error_text import describe
from {{ cookiecutter.package_name }}.ledger.models import TaskState
from {{ cookiecutter.package_name }}.ledger.tracking import (
    Claim,
    claim,
    is_tracked,
    mark,
    record_outcome,
    record_retry,
    release,
)
from {{ cookiecutter.package_name }}.settings import get_settings
from {{ cookiecutter.package_name }}.tasks.cancel import abort_requested
from {{ cookiecutter.package_name }}.tasks.errors import AttemptLimitExceeded, RetryableError

logger = logging.getLogger(__name__)
_settings = get_settings()

PROGRESS = "PROGRESS"
# On a retry message: the attempt that sent it, which had ended by then (tracking.claim).
RETRY_OF_HEADER = "ledger_retry_of"
# On the running request: the attempt its claim counted.
_ATTEMPT = "ledger_attempt"


class ReliableTask(Task):  # type: ignore[type-arg]
    """Retries transient errors with jittered exponential backoff and records every transition."""

    # R12: only errors that may pass on their own are retried automatically; a ledger
    # database restarting or failing over raises OperationalError.
    autoretry_for = (RetryableError, ConnectionError, TimeoutError, OperationalError)
    # R12: delays of 2, 4, 8... seconds (capped), each drawn at random below that bound,
    # so a burst of failures does not retry in lockstep.
    retry_backoff = _settings.task_retry_backoff
    retry_backoff_max = _settings.task_retry_backoff_max
    retry_jitter = True
    # R12/R14: after this many retries the failure is final (and dead-lettered).
    max_retries = _settings.task_max_retries
    # R13: countdown of a manual self.retry() that does not pass one.
    default_retry_delay = _settings.task_default_retry_delay
    # Check arguments against the signature when publishing, not in the worker.
    typing = True
    # R21: deliveries of tasks the ledger already finished are dropped before they run.
    Request = "{{ cookiecutter.package_name }}.tasks.request:LedgerRequest"

    def check_arguments(self, arguments: dict[str, Any]) -> None:
        """Rules across arguments that their annotations cannot state (the API calls this
        after validating each one). Raise ValueError with the reason."""

    # --- R33: the ledger row follows every start and every outcome -----------------------
    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        try:
            outcome, attempts = claim(
                task_id, self.request.hostname, getattr(self.request, RETRY_OF_HEADER, None)
            )
        except OperationalError as exc:
            # The ledger is unreachable: run it later, never fail a task that has not run.
            raise self.retry(exc=exc, countdown=self._backoff()) from exc
        setattr(self.request, _ATTEMPT, attempts)
        if outcome is Claim.FINAL:
            raise Ignore()  # finished meanwhile (a duplicate that got this far)
        if outcome is Claim.HELD:
            # A copy of a task a live worker is running: acknowledged, not run. Should
            # that worker die, its claim dies with it and the task is sent again.
            logger.warning("copy of a running task ignored", extra={"event": "task_held"})
            raise Ignore()
        logger.info(
            "task started",
            extra={"event": "task_started", "retries": self.request.retries, "attempt": attempts},
        )
        if attempts > _settings.ledger_max_attempts:
            # A poison task (e.g. one that kills its process) stops here instead of looping.
            raise AttemptLimitExceeded(
                f"attempt {attempts} exceeds LEDGER_MAX_ATTEMPTS={_settings.ledger_max_attempts}"
            )

    def finish_in(self, session: Session) -> None:
        """Mark this task SUCCEEDED inside the caller's transaction.

        Commit the side effect and the ledger state together: a crash after that commit
        cannot make a redelivery repeat the effect, and of two copies running at once
        (a redelivery racing a slow original) only the first to commit keeps its
        effect; the other's transaction is rolled back and the copy ignored (R21).
        """
        task_id = str(self.request.id)
        if not mark(session, task_id, TaskState.SUCCEEDED) and is_tracked(session, task_id):
            logger.warning("duplicate finished second", extra={"event": "task_duplicate"})
            raise Ignore()

    # --- R15: lifecycle hooks, each logged with the task's context --------------------------
    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        record_outcome(task_id, TaskState.SUCCEEDED)
        logger.info(
            "task succeeded",
            extra={"event": "task_succeeded", "retries": self.request.retries},
        )

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: Exception | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        """Record RETRY before Celery sends the retry: a fast worker may start it at once.

        The message also names the attempt that sent it: should the ledger be down now,
        the row stays STARTED by this run, and that name is what lets the retry claim it.
        """
        if self.request.id is not None and not self.request.called_directly:
            error = "retry requested" if exc is None else describe(exc)
            record_retry(str(self.request.id), error, self._retry_delay(eta, countdown))
            attempt = getattr(self.request, _ATTEMPT, None)
            if attempt is not None:
                headers = dict(options.get("headers") or self.request.headers or {})
                options["headers"] = {**headers, RETRY_OF_HEADER: attempt}
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def _backoff(self) -> int:
        """The countdown autoretry would use for this retry (R12)."""
        return int(
            get_exponential_backoff_interval(
                factor=int(self.retry_backoff),
                retries=self.request.retries,
                maximum=self.retry_backoff_max,
                full_jitter=self.retry_jitter,
            )
        )

    def replace(self, sig: Any) -> Any:
        """Hand the row to the replacement, which runs under this task's id (a chord's
        callback, for one): freed first, its claim is not refused as a copy of this run."""
        if self.request.id is not None and not self.request.called_directly:
            release(str(self.request.id))
        return super().replace(sig)

    def _retry_delay(self, eta: datetime | None, countdown: float | None) -> float:
        """Seconds until the retry is due, as Celery will compute them."""
        if countdown is not None:
            return float(countdown)
        if eta is not None:
            aware = eta if eta.tzinfo else eta.replace(tzinfo=UTC)
            return max(0.0, (aware - datetime.now(UTC)).total_seconds())
        return float(self.default_retry_delay or 0)

    def on_retry(
        self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo
    ) -> None:
        # The row went RETRY in retry(), before the message existed.
        logger.warning(
            "task will retry",
            extra={
                "event": "task_retry",
                "retries": self.request.retries,
                "error": describe(exc),
            },
        )

    def on_failure(
        self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo
    ) -> None:
        error = describe(exc)
        dead = self._exhausted(exc)
        record_outcome(task_id, TaskState.DEAD if dead else TaskState.FAILED, error)
        if dead:
            # R14: retries or attempts ran out: park a copy on the dead queue.
            send_to_dead_queue(self.app, task_id, self.name, dict(kwargs or {}), error)
        logger.error(
            "task failed",
            extra={
                "event": "task_dead" if dead else "task_failed",
                "retries": self.request.retries,
                "error": describe(exc),
                "traceback": str(einfo),
            },
        )

    def _exhausted(self, exc: Exception) -> bool:
        """DEAD: a transient error that outlived its retries, or too many attempts."""
        if isinstance(exc, AttemptLimitExceeded):
            return True
        retryable = isinstance(exc, tuple(self.autoretry_for))
        return retryable and self.request.retries >= (self.max_retries or 0)

    # --- R23: progress ------------------------------------------------------------------
    def report_progress(self, done: int, total: int, **extra: Any) -> None:
        """Publish a PROGRESS state the API shows while the task runs."""
        if self.request.id is None or self.request.called_directly:
            return
        self.update_state(state=PROGRESS, meta={"done": done, "total": total, **extra})

    # --- R24: cooperative abort ---------------------------------------------------------
    def is_aborted(self) -> bool:
        task_id = self.request.id
        return task_id is not None and abort_requested(self.app, task_id)

    def stop_if_aborted(self) -> None:
        """Call at safe points: marks the task REVOKED and stops without a retry."""
        if not self.is_aborted():
            return
        logger.warning("task aborted on request", extra={"event": "task_aborted"})
        self.backend.mark_as_revoked(str(self.request.id), reason="aborted", request=self.request)
        record_outcome(str(self.request.id), TaskState.REVOKED, "aborted on request")
        raise Ignore()
