"""Celery signal handlers that keep the ledger right in worker processes (R41)."""

from __future__ import annotations

from typing import Any

from celery import signals

from {{ cookiecutter.package_name }}.ledger.db import reset_after_fork
from {{ cookiecutter.package_name }}.ledger.models import TaskState
from {{ cookiecutter.package_name }}.ledger.tracking import record_outcome


def _on_revoked(request: Any, expired: bool, **_: Any) -> None:
    """A revoked task's ledger row ends REVOKED (the log line: observability/signals.py)."""
    task_id = getattr(request, "id", None)
    if task_id:
        record_outcome(task_id, TaskState.REVOKED, "expired" if expired else "revoked")


def _reset_connections(**_: Any) -> None:
    reset_after_fork()


def connect() -> None:
    """Attach the handlers; called once by the Celery app module."""
    signals.task_revoked.connect(_on_revoked, weak=False)
    # Prefork children must not share the parent's database connections.
    signals.worker_process_init.connect(_reset_connections, weak=False)
