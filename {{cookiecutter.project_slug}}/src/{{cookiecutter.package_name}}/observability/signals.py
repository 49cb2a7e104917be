"""Celery signal handlers: logging setup, task timing and revocation logs (R39-R41)."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals

from {{ cookiecutter.package_name }}.observability.logging import configure_logging
from {{ cookiecutter.package_name }}.observability.redact import redact
from {{ cookiecutter.package_name }}.settings import get_settings

logger = logging.getLogger(__name__)

# Start times of the tasks running in this process, by task id.
_started: dict[str, float] = {}


def _setup_logging(**_: Any) -> None:
    """R39: connected to setup_logging, so Celery leaves logging to us."""
    configure_logging(get_settings(), "worker")


def _on_prerun(task_id: str, **_: Any) -> None:
    # "task started" is logged by the task once its ledger claim lets it run
    # (ReliableTask.before_start): a copy that is skipped never logs it.
    _started[task_id] = time.monotonic()


def _on_postrun(
    task_id: str, task: Any, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    """R40: duration, final state and a redacted return value of every run."""
    started = _started.pop(task_id, None)
    duration = None if started is None else round(time.monotonic() - started, 6)
    logger.info(
        "task finished",
        extra={
            "event": "task_finished",
            "state": state,
            "duration_seconds": duration,
            "return_value": redact(retval),
        },
    )


def _on_revoked(request: Any, terminated: bool, signum: Any, expired: bool, **_: Any) -> None:
    """R41: a revoked task leaves a trace (its ledger row: ledger/signals.py)."""
    task_id = getattr(request, "id", None)
    logger.warning(
        "task revoked",
        extra={
            "event": "task_revoked",
            "task_id": task_id,
            "task_name": getattr(request, "task_name", None) or getattr(request, "name", None),
            "terminated": terminated,
            "signum": None if signum is None else str(signum),
            "expired": expired,
        },
    )


def connect() -> None:
    """Attach every handler; called once by the Celery app module."""
    signals.setup_logging.connect(_setup_logging, weak=False)
    signals.task_prerun.connect(_on_prerun, weak=False)
    signals.task_postrun.connect(_on_postrun, weak=False)
    signals.task_revoked.connect(_on_revoked, weak=False)
