"""What the ledger keeps of errors, argument bounds that match columns and fan-out limits,
and replays that run once, only for allowed tasks."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import Future
from typing import Any

import pytest
from celery import Celery
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import StatementError

from {{ cookiecutter.package_name }}.api.catalog import SubmissionRejected, TaskCatalog
from {{ cookiecutter.package_name }}.ledger.db import session_scope
from {{ cookiecutter.package_name }}.ledger.deadletters import replay
from {{ cookiecutter.package_name }}.ledger.error_text import ERROR_LENGTH, clean, describe
from {{ cookiecutter.package_name }}.ledger.models import EFFECT_KEY_LENGTH, TaskRecord, TaskState, utcnow
from {{ cookiecutter.package_name }}.settings import get_settings
from {{ cookiecutter.package_name }}.tasks import reports

pytestmark = pytest.mark.reliability("R49")

TASKS = "/api/v1/tasks"


def test_a_database_error_is_kept_without_its_statement_or_parameters() -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(StatementError) as raised, engine.connect() as connection:
        connection.execute(text("INSERT INTO nowhere VALUES (:secret)"), {"secret": "hunter2"})
    assert "hunter2" in str(raised.value)  # what used to reach last_error
    kept = describe(raised.value)
    assert kept == "OperationalError: no such table: nowhere"


def test_control_characters_are_removed_and_the_text_is_bounded() -> None:
    assert clean("nul\x00here\x1b[31m\x7f") == "nulhere[31m"
    assert clean("line one\nline\ttwo") == "line one\nline\ttwo"
    assert clean("lone \ud800 surrogate") == "lone ? surrogate"
    assert len(clean("x" * (ERROR_LENGTH * 2))) == ERROR_LENGTH
    assert describe(ValueError("a\x00b")) == "ValueError: ab"


def test_arguments_are_bounded_by_the_column_they_fill(client: TestClient) -> None:
    fits = {"name": "demo.record_effect", "kwargs": {"key": "k" * EFFECT_KEY_LENGTH}}
    assert client.post(TASKS, json=fits).status_code == 202
    too_long = {"name": "demo.record_effect", "kwargs": {"key": "k" * (EFFECT_KEY_LENGTH + 1)}}
    refused = client.post(TASKS, json=too_long)
    assert refused.status_code == 422
    assert "key" in refused.json()["detail"]


def test_a_retry_countdown_is_bounded_by_the_backoff_cap(celery_app: Celery) -> None:
    settings = get_settings()
    past_the_cap = settings.task_retry_backoff_max + 1
    catalog = TaskCatalog(celery_app, ("demo.retry_later",))
    with pytest.raises(SubmissionRejected, match="countdown"):
        catalog.validate("demo.retry_later", [], {"failures": 1, "countdown": past_the_cap})


def test_a_report_may_not_fan_out_past_its_bound(client: TestClient, eager: Celery) -> None:
    limit = get_settings().report_max_chunks
    body = {"name": "demo.reports.build_report", "kwargs": {"size": 5000, "chunk_size": 1}}
    refused = client.post(TASKS, json=body)
    assert refused.status_code == 422
    assert f"at most {limit}" in refused.json()["detail"]
    at_limit = {"size": limit * 10, "chunk_size": 10}
    assert client.post(TASKS, json={**body, "kwargs": at_limit}).status_code == 202
    # A direct caller gets the same refusal, as a final failure.
    outcome = reports.build_report.apply(kwargs={"size": 5000, "chunk_size": 1})
    assert isinstance(outcome.result, ValueError)


def _dead_row(name: str) -> str:
    task_id = str(uuid.uuid4())
    now = utcnow()
    with session_scope() as session:
        session.add(
            TaskRecord(
                id=task_id,
                name=name,
                queue="default",
                kwargs={"message": "again"} if name == "demo.echo" else {},
                state=TaskState.DEAD,
                attempts=6,
                dispatches=1,
                created_at=now,
                updated_at=now,
                finished_at=now,
            )
        )
    return task_id


def _replay(client: TestClient, task_id: str) -> Any:
    return client.post(f"/api/v1/dead-letters/{task_id}/replay")


def test_a_replay_runs_once_however_often_it_is_asked_for(client: TestClient) -> None:
    dead = _dead_row("demo.echo")
    first = _replay(client, dead)
    second = _replay(client, dead)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    with session_scope() as session:
        runs = session.query(TaskRecord).filter(TaskRecord.replay_of == dead).count()
    assert runs == 1


def test_a_replay_is_only_for_allowed_tasks_and_known_ids(client: TestClient) -> None:
    outside = _replay(client, _dead_row("ledger.prune"))
    assert outside.status_code == 422
    assert "allowlist" in outside.json()["detail"]
    assert _replay(client, str(uuid.uuid4())).status_code == 404


def test_a_replay_waits_for_one_in_progress_and_returns_its_run(celery_app: Celery) -> None:
    """The first replay's transaction is held open; a second one must wait for it (the
    row lock, or SQLite's write lock) and then find its run, not make another."""
    dead = _dead_row("demo.echo")
    second: Future[str] = Future()

    def replay_again() -> None:
        with session_scope() as session:
            second.set_result(replay(session, celery_app, dead).id)

    with session_scope() as session:
        first = replay(session, celery_app, dead).id
        waiting = threading.Thread(target=replay_again)
        waiting.start()
        # Long enough for an unlocked second replay to read the ledger before this commits.
        waiting.join(timeout=1)
        assert not second.done()
    waiting.join(timeout=30)
    assert second.result(timeout=0) == first
    with session_scope() as session:
        assert session.query(TaskRecord).filter(TaskRecord.replay_of == dead).count() == 1
