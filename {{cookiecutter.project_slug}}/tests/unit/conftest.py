"""Unit tier: no services. In-memory broker and results; the ledger is a SQLite file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

# Before the package reads its settings: a scratch ledger for this test run.
os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='ledger-unit-')}/ledger.db"

import pytest
from alembic import command
from celery import Celery
from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.celery_app import app
from {{ cookiecutter.package_name }}.ledger.migrate import alembic_config

# Switched before anything touches the connection pools; the configuration module keeps
# the production values, and test_celeryconfig.py asserts those.
app.conf.update(broker_url="memory://", result_backend="cache+memory://")


@pytest.fixture(scope="session", autouse=True)
def ledger_schema() -> None:
    """R33: the unit tier's ledger gets the real migrations."""
    command.upgrade(alembic_config(), "head")


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
