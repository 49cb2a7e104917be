"""Cooperative abort flags (R24), kept in the result backend next to the task's state.

Celery's AbortableTask stores "ABORTED" as the task state, which the next progress
update overwrites; a separate key cannot be lost that way.
"""

from __future__ import annotations

from typing import cast

from celery import Celery
from celery.backends.base import BaseKeyValueStoreBackend


def _store(app: Celery) -> BaseKeyValueStoreBackend:
    """The result backend as a key-value store (Redis in production, memory in unit tests)."""
    return cast(BaseKeyValueStoreBackend, app.backend)


def _abort_key(app: Celery, task_id: str) -> str:
    return f"{app.main}-abort-{task_id}"


def request_abort(app: Celery, task_id: str) -> None:
    """Ask a running task to stop at its next checkpoint (expires with the results)."""
    _store(app).set(_abort_key(app, task_id), b"1")


def abort_requested(app: Celery, task_id: str) -> bool:
    return _store(app).get(_abort_key(app, task_id)) is not None
