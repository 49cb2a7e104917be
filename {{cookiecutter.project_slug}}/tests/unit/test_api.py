"""The task API's answers: validation (4xx with a reason), 202 on hand-over, 503 when not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery, states
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError

from {{ cookiecutter.package_name }}.ledger.db import session_scope
from {{ cookiecutter.package_name }}.ledger.models import TaskRecord
from {{ cookiecutter.package_name }}.settings import get_settings
from {{ cookiecutter.package_name }}.tasks.cancel import abort_requested

TASKS = "/api/v1/tasks"


def submit(client: TestClient, **body: Any) -> Any:
    return client.post(TASKS, json=body)


def ledger_state(task_id: str) -> str | None:
    with session_scope() as session:
        record = session.get(TaskRecord, task_id)
        return None if record is None else record.state


def test_submit_accepts_an_allowlisted_task(client: TestClient) -> None:
    response = submit(client, name="demo.echo", kwargs={"message": "hi"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert uuid.UUID(body["id"])
    assert body["queue"] == "default"
    assert body["state"] == "PUBLISHED"
    assert response.headers["location"].endswith(f"{TASKS}/{body['id']}")
    assert response.headers["x-request-id"]


@pytest.mark.reliability("R10")
@pytest.mark.parametrize(
    ("body", "queue"),
    [
        ({"name": "demo.urgent_ping"}, "high"),
        ({"name": "demo.reports.build_report", "kwargs": {"size": 10, "chunk_size": 5}}, "low"),
        ({"name": "demo.echo", "args": ["positional"], "queue": "low"}, "low"),
    ],
)
def test_submit_reports_the_routed_queue(client: TestClient, body: Any, queue: str) -> None:
    response = client.post(TASKS, json=body)
    assert response.status_code == 202, response.text
    assert response.json()["queue"] == queue


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"name": "os.system", "args": ["id"]}, "not allowed"),
        ({"name": "demo.echo"}, "message"),
        ({"name": "demo.echo", "kwargs": {"message": "x", "extra": 1}}, "extra"),
        ({"name": "demo.sleep", "kwargs": {"seconds": "soon"}}, "seconds"),
        ({"name": "demo.sleep", "kwargs": {"seconds": 100_000}}, "seconds"),
        ({"name": "demo.echo", "kwargs": {"message": "x"}, "queue": "urgent"}, "queue"),
        ({"name": "demo.echo", "kwargs": {"message": "x"}, "priority": 10}, "priority"),
        ({"name": "demo.echo", "kwargs": {"message": "x"}, "unknown_field": 1}, "unknown_field"),
        ({"name": "demo.echo", "kwargs": {"message": "x"}, "countdown": -1}, "countdown"),
        ({"name": "demo.echo", "kwargs": {"message": "x"}, "eta": "2030-01-01T00:00:00"}, "eta"),
        (
            {
                "name": "demo.echo",
                "kwargs": {"message": "x"},
                "countdown": 1,
                "eta": "2030-01-01T00:00:00Z",
            },
            "not both",
        ),
    ],
)
def test_invalid_submissions_get_422_with_a_reason(
    client: TestClient, body: Any, reason: str
) -> None:
    response = client.post(TASKS, json=body)
    assert response.status_code == 422, response.text
    assert reason in response.text


@pytest.mark.reliability("R05")
def test_countdown_beyond_the_visibility_timeout_is_refused(client: TestClient) -> None:
    limit = get_settings().max_countdown
    too_long = submit(client, name="demo.echo", kwargs={"message": "x"}, countdown=limit + 1)
    assert too_long.status_code == 422
    assert "exceeds" in too_long.json()["detail"]
    eta = (datetime.now(UTC) + timedelta(seconds=limit + 60)).isoformat()
    assert submit(client, name="demo.echo", kwargs={"message": "x"}, eta=eta).status_code == 422
    ok = submit(client, name="demo.echo", kwargs={"message": "x"}, countdown=limit - 1)
    assert ok.status_code == 202


def test_oversized_bodies_get_413(client: TestClient) -> None:
    big = "x" * (get_settings().api_max_body_bytes + 1)
    response = submit(client, name="demo.echo", kwargs={"message": big})
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "demo.echo", "kwargs": {"message": "'
        yield big.encode()
        yield b'"}}'

    streamed = client.post(TASKS, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


@pytest.mark.reliability("R17", "R33")
def test_broker_down_keeps_the_task_durable_as_queued(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr("celery.Celery.send_task", refuse)
    response = submit(client, name="demo.echo", kwargs={"message": "x"})
    assert response.status_code == 202
    assert response.json()["state"] == "QUEUED"
    assert ledger_state(response.json()["id"]) == "QUEUED"


@pytest.mark.reliability("R33")
def test_ledger_down_answers_503_and_publishes_nothing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[Any] = []
    monkeypatch.setattr("celery.Celery.send_task", lambda *a, **k: sent.append(a))

    @contextmanager
    def unreachable() -> Iterator[None]:
        raise SQLAlchemyOperationalError("SELECT 1", {}, ConnectionRefusedError("db down"))
        yield

    monkeypatch.setattr("{{ cookiecutter.package_name }}.ledger.publish.single_statement", unreachable)
    response = submit(client, name="demo.echo", kwargs={"message": "x"})
    assert response.status_code == 503
    assert "ledger database unreachable" in response.json()["detail"]
    assert response.headers["retry-after"]
    assert sent == []


@pytest.mark.reliability("R22", "R23")
@pytest.mark.parametrize(
    ("state", "result", "expected"),
    [
        (states.STARTED, {"pid": 1}, {"progress": {"pid": 1}}),
        ("PROGRESS", {"done": 1, "total": 4}, {"progress": {"done": 1, "total": 4}}),
        (states.SUCCESS, {"answer": 42}, {"result": {"answer": 42}}),
        (states.RETRY, ValueError("flaky"), {"error": {"type": "ValueError", "message": "flaky"}}),
        (states.FAILURE, KeyError("gone"), {"error": {"type": "KeyError", "message": "'gone'"}}),
    ],
)
def test_status_shows_state_progress_result_and_error(
    client: TestClient, celery_app: Celery, state: str, result: Any, expected: dict[str, Any]
) -> None:
    task_id = str(uuid.uuid4())
    celery_app.backend.store_result(task_id, result, state)
    body = client.get(f"{TASKS}/{task_id}").json()
    assert body["celery_state"] == state
    for key, value in expected.items():
        assert body[key] == value


def test_a_status_call_reads_the_result_backend_once(
    client: TestClient, celery_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, finished = str(uuid.uuid4()), str(uuid.uuid4())
    celery_app.backend.store_result(running, {"done": 1, "total": 4}, "PROGRESS")
    celery_app.backend.store_result(finished, "done", states.SUCCESS)
    reads: list[str] = []
    # app.backend is one instance per thread, and the endpoint runs in the server's.
    backend_class: Any = type(celery_app.backend)
    read = backend_class.get

    def counted_read(backend: Any, key: str) -> Any:
        reads.append(key)
        return read(backend, key)

    monkeypatch.setattr(backend_class, "get", counted_read)
    for task_id in (running, finished):
        reads.clear()
        body = client.get(f"{TASKS}/{task_id}").json()
        assert len(reads) == 1, reads
    assert datetime.fromisoformat(body["date_done"]) <= datetime.now(UTC)


def test_status_of_an_unknown_task_is_404_and_bad_ids_are_422(client: TestClient) -> None:
    assert client.get(f"{TASKS}/{uuid.uuid4()}").status_code == 404
    assert client.get(f"{TASKS}/not-a-uuid").status_code == 422


@pytest.mark.reliability("R33")
def test_status_reads_the_ledger_row(client: TestClient) -> None:
    task_id = submit(client, name="demo.echo", kwargs={"message": "x"}).json()["id"]
    body = client.get(f"{TASKS}/{task_id}").json()
    assert body["state"] == "PUBLISHED"
    assert body["celery_state"] == states.PENDING
    assert body["name"] == "demo.echo"
    assert body["attempts"] == 0
    assert body["created_at"]


@pytest.mark.reliability("R24")
def test_cancel_revokes_queued_and_aborts_running_tasks(
    client: TestClient, celery_app: Celery
) -> None:
    queued = submit(client, name="demo.echo", kwargs={"message": "x"}).json()["id"]
    response = client.delete(f"{TASKS}/{queued}")
    assert response.status_code == 202
    assert response.json()["action"] == "revoked"
    assert ledger_state(queued) == "REVOKED"
    assert client.delete(f"{TASKS}/{queued}").status_code == 409
    assert client.delete(f"{TASKS}/{uuid.uuid4()}").status_code == 404

    running = str(uuid.uuid4())
    celery_app.backend.store_result(running, {"done": 1, "total": 9}, "PROGRESS")
    response = client.delete(f"{TASKS}/{running}")
    assert response.json()["action"] == "abort_requested"
    assert abort_requested(celery_app, running)

    finished = str(uuid.uuid4())
    celery_app.backend.store_result(finished, "done", states.SUCCESS)
    assert client.delete(f"{TASKS}/{finished}").status_code == 409


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"broker": "ok", "result_backend": "ok", "database": "ok"}
    submit(client, name="demo.echo", kwargs={"message": "counted"})
    metrics = client.get("/metrics").text
    assert 'tasks_submitted_total{outcome="published",task="demo.echo"}' in metrics
    assert 'ledger_tasks{state="PUBLISHED"}' in metrics
    assert "http_request_duration_seconds_bucket" in metrics


def test_readiness_fails_with_a_reason_when_the_broker_is_down(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("broker gone")

    monkeypatch.setattr("kombu.Connection.ensure_connection", refuse)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "broker gone" in response.json()["broker"]
