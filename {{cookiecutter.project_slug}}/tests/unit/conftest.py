"""Unit tier: no services. The broker is kombu's in-memory transport, results live in memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.celery_app import app

# Switched before anything touches the connection pools; the configuration module keeps
# the production values, and test_celeryconfig.py asserts those.
app.conf.update(broker_url="memory://", result_backend="cache+memory://")


@pytest.fixture
def celery_app() -> Celery:
    return app


@pytest.fixture
def eager(celery_app: Celery) -> Iterator[Celery]:
    """R28: eager execution, for unit tests only; restored afterwards."""
    celery_app.conf.update(task_always_eager=True)
    try:
        yield celery_app
    finally:
        celery_app.conf.update(task_always_eager=False)


@pytest.fixture
def client() -> Iterator[TestClient]:
    from {{ cookiecutter.package_name }}.api.app import create_app

    with TestClient(create_app()) as test_client:
        yield test_client
