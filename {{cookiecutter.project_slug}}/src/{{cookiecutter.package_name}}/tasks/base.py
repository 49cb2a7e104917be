"""The base class of every task: retries, hooks, progress and abort (R12-R15, R23, R24)."""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import Task
from celery.exceptions import Ignore
from sqlalchemy.orm import Session

from {{ cookiecutter.package_name }}.ledger.deadletters import send_to_dead_queue
from {{ cookiecutter.package_name }}.ledger.models import TaskState
from {{ cookiecutter.package_name }}.ledger.tracking import (
    Claim,
    claim,
    is_tracked,
    mark,
    record_outcome,
)
from {{ cookiecutter.package_name }}.settings import get_settings
from {{ cookiecutter.package_name }}.tasks.cancel import abort_requested
from {{ cookiecutter.package_name }}.tasks.errors import AttemptLimitExceeded, RetryableError

logger = logging.getLogger(__name__)
_settings = get_settings()

PROGRESS = "PROGRESS"


class ReliableTask(Task):  # type: ignore[type-arg]
    """Retries transient errors with jittered exponential backoff and records every transition."""

    # R12: only errors that may pass on their own are retried automatically.
    autoretry_for = (RetryableError, ConnectionError, TimeoutError)
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

    # --- R33: the ledger row follows every start and every outcome -----------------------
    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        outcome, attempts = claim(task_id, self.request.hostname)
        if outcome is Claim.FINAL:
            raise Ignore()  # finished meanwhile (a duplicate that got this far)
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

    def on_retry(
        self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo
    ) -> None:
        record_outcome(task_id, TaskState.RETRY, f"{type(exc).__name__}: {exc}")
        logger.warning(
            "task will retry",
            extra={
                "event": "task_retry",
                "retries": self.request.retries,
                "error": f"{type(exc).__name__}: {exc}",
            },
        )

    def on_failure(
        self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"
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
                "error": f"{type(exc).__name__}: {exc}",
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
