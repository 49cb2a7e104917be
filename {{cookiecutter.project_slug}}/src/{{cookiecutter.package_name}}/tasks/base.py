"""The base class of every task: retries, hooks, progress and abort (R12-R15, R23, R24)."""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import Task
from celery.exceptions import Ignore

from {{ cookiecutter.package_name }}.settings import get_settings
from {{ cookiecutter.package_name }}.tasks.cancel import abort_requested
from {{ cookiecutter.package_name }}.tasks.errors import RetryableError

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

    # --- R15: lifecycle hooks, each logged with the task's context --------------------------
    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        logger.info(
            "task succeeded",
            extra={"event": "task_succeeded", "retries": self.request.retries},
        )

    def on_retry(
        self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo
    ) -> None:
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
        logger.error(
            "task failed",
            extra={
                "event": "task_failed",
                "retries": self.request.retries,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": str(einfo),
            },
        )

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
        raise Ignore()
