"""Unit tier: no services. In-memory broker and results; the ledger is a SQLite file."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator

# Before the package reads its settings: a scratch ledger and key file for this test run.
os.environ["UNIT_SCRATCH_DIR"] = tempfile.mkdtemp(prefix="ledger-unit-")
os.environ["DATABASE_URL"] = f"sqlite:///{os.environ['UNIT_SCRATCH_DIR']}/ledger.db"
os.environ["API_KEYS_FILE"] = f"{os.environ['UNIT_SCRATCH_DIR']}/api-keys.json"
os.environ["ENVIRONMENT"] = "test"
# TestClient's host (http://testserver).
os.environ["API_TRUSTED_HOSTS"] = "testserver"
os.environ["API_KEYS"] = ""  # the project's .env has the compose stack's keys

import pytest
from alembic import command
from celery import Celery
from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.api.keys import main as keys_cli
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


def keys_command(*arguments: str, code: int = 0) -> str:
    """Run the real key CLI (api/keys.py), insist on its exit code; what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        assert keys_cli(list(arguments)) == code
    return printed.getvalue().strip()


def create_key(name: str, *scopes: str) -> str:
    """A key in the unit tier's key file (API_KEYS_FILE); the CLI prints it once."""
    return keys_command("create", name, *(f"--scope={scope}" for scope in scopes))


ADMIN_KEY = create_key(
    "unit-admin",
    "tasks:submit",
    "tasks:read",
    "tasks:cancel",
    "tasks:admin",
    "deadletters:read",
    "deadletters:replay",
)


@pytest.fixture
def client() -> Iterator[TestClient]:
    """The API with every scope (X-API-Key of the admin key)."""
    from {{ cookiecutter.package_name }}.api.app import create_app

    with TestClient(create_app(), headers={"X-API-Key": ADMIN_KEY}) as test_client:
        yield test_client
