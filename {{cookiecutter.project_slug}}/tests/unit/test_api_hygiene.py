"""The API as exposed to anyone: strict JSON in, JSON errors out (with the request id),
zoned timestamps, a trusted request id and Host, bounded metric labels, security
headers and a self-hosted /docs. Each case the fuzz tier (tests/integration/
test_api_fuzz.py) or a probe found is kept here."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from starlette.types import Message

from {{ cookiecutter.package_name }}.api.app import create_app
from {{ cookiecutter.package_name }}.api.errors import plain_errors
from {{ cookiecutter.package_name }}.api.metrics import UNKNOWN
from {{ cookiecutter.package_name }}.api.middleware import (
    CLIENT_CLOSED,
    REQUEST_ID_MAX_LENGTH,
    SECURITY_HEADERS,
)
from {{ cookiecutter.package_name }}.api.schemas import DeadLetter
from {{ cookiecutter.package_name }}.ledger.db import session_scope
from {{ cookiecutter.package_name }}.ledger.models import TaskRecord, TaskState
from {{ cookiecutter.package_name }}.settings import Settings
from tests.unit.conftest import ADMIN_KEY

TASKS = "/api/v1/tasks"
ECHO = {"name": "demo.echo", "kwargs": {"message": "hi"}}
JSON = {"content-type": "application/json"}
FRESH_ID = re.compile(r"[0-9a-f]{32}")
pytestmark = pytest.mark.reliability("R47")


def ledger_rows() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(TaskRecord)) or 0)


def post_raw(client: TestClient, body: bytes, headers: dict[str, str] = JSON) -> Any:
    return client.post(TASKS, content=body, headers=headers)


def assert_error(response: Any, status: int, reason: str) -> None:
    """An error answer: JSON with the reason and the request id of its header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert reason in json.dumps(body["detail"]), body
    assert body["request_id"] == response.headers["x-request-id"]


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---- strict JSON in -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"name": "demo.echo", "kwargs": {"message": "x"}, "countdown": NaN}', "NaN"),
        (b'{"name": "demo.echo", "kwargs": {"message": "x"}, "countdown": Infinity}', "Infinity"),
        (b'{"name": "demo.echo", "kwargs": {"message": "x"}, "countdown": 1e400}', "1e400"),
        (b'{"name": "demo.echo", "kwargs": {"message": "x"}, "priority": NaN}', "NaN"),
        (b'{"name": "demo.echo", "kwargs": {"message": "x"}, "priority": 1e400}', "1e400"),
        (b'{"name": "demo.echo", "args": [-Infinity], "kwargs": {"message": "x"}}', "Infinity"),
        (b'{"name": "demo.echo", "kwargs": {"message": NaN}}', "NaN"),
        (b'{"name": "demo.echo", "kwargs": {"message": "x"}, "unknown": NaN}', "NaN"),
        (b'{"name": "\\ud800"}', "lone surrogate"),
        (b'{"name": "demo.echo", "kwargs": {"message": "\\udfff"}}', "lone surrogate"),
        (b'{"name": "demo.\xff"}', "not UTF-8"),
    ],
)
def test_a_body_that_is_not_strict_json_is_400_and_queues_nothing(
    client: TestClient, body: bytes, reason: str
) -> None:
    before = ledger_rows()
    assert_error(post_raw(client, body), 400, reason)
    assert ledger_rows() == before


def test_a_body_that_is_not_json_is_415(client: TestClient) -> None:
    before = ledger_rows()
    plain = post_raw(client, b"name=demo.echo", {"content-type": "text/plain"})
    assert_error(plain, 415, "application/json")
    assert_error(post_raw(client, b"{}", {"content-type": ""}), 415, "untyped")
    assert ledger_rows() == before
    # application/*+json is JSON too (as FastAPI reads it).
    typed = post_raw(client, json.dumps(ECHO).encode(), {"content-type": "application/x+json"})
    assert typed.status_code == 202, typed.text


def test_malformed_json_is_422_with_its_position(client: TestClient) -> None:
    response = post_raw(client, b'{"name": ')
    assert_error(response, 422, "json_invalid")
    assert response.json()["detail"][0]["loc"] == ["body", 9]


def test_an_eta_beyond_the_calendar_in_utc_is_422(client: TestClient) -> None:
    body = {**ECHO, "eta": "0001-01-01T00:00:00+14:00"}
    assert_error(client.post(TASKS, json=body), 422, "out of range")


def test_validation_errors_render_whatever_the_input_was() -> None:
    errors = [
        {"type": "finite_number", "loc": ("body", "countdown"), "msg": "m", "input": float("nan")},
        {"type": "x", "loc": ("body",), "msg": "m", "input": b"\xff", "ctx": {"e": ValueError()}},
        {"type": "x", "loc": ("body",), "msg": "m", "input": datetime(2030, 1, 1, tzinfo=UTC)},
    ]
    plain = plain_errors(errors)
    json.dumps(plain, allow_nan=False)
    assert [item["input"] for item in plain] == ["nan", "b'\\xff'", "2030-01-01T00:00:00+00:00"]


def test_a_dead_letter_offset_beyond_64_bits_is_422(client: TestClient) -> None:
    """Found by the fuzz tier: PostgreSQL refused the OFFSET and the API answered 503."""
    dead_letters = "/api/v1/dead-letters"
    assert_error(client.get(dead_letters, params={"offset": 2**63}), 422, "offset")
    assert client.get(dead_letters, params={"offset": 2**63 - 1}).status_code == 200


# ---- JSON errors out ------------------------------------------------------------------


def test_every_error_answer_is_json_with_the_request_id(client: TestClient) -> None:
    too_big = b'{"name": "' + b"x" * Settings().api_max_body_bytes + b'"}'
    assert_error(post_raw(client, too_big), 413, "larger than")
    assert_error(client.get(f"{TASKS}/{uuid.uuid4()}"), 404, "no task")
    assert_error(client.get(f"{TASKS}/not-a-uuid"), 422, "uuid")
    assert_error(client.post(TASKS, json={"name": "nope"}), 422, "not allowed")
    assert_error(client.get("/no/such/path"), 404, "Not Found")
    assert_error(client.put(TASKS), 405, "Method Not Allowed")


def test_an_unexpected_error_is_500_without_the_traceback() -> None:
    api: FastAPI = create_app()

    @api.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(api, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert_error(response, 500, "internal error")
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value


# ---- answers --------------------------------------------------------------------------


def test_ledger_timestamps_carry_their_zone(client: TestClient) -> None:
    task_id = client.post(TASKS, json=ECHO).json()["id"]
    body = client.get(f"{TASKS}/{task_id}").json()
    assert datetime.fromisoformat(body["created_at"]).utcoffset() == timedelta(0), body
    with session_scope() as session:
        record = session.get(TaskRecord, task_id)
        assert record is not None
        record.state = TaskState.DEAD
        record.finished_at = datetime(2030, 1, 2, 3, 4, 5)  # naive UTC, as the ledger keeps it
    dead = client.get("/api/v1/dead-letters", params={"limit": 500}).json()
    finished = next(row["finished_at"] for row in dead if row["id"] == task_id)
    assert finished == "2030-01-02T03:04:05Z"


def test_an_aware_timestamp_is_given_in_utc() -> None:
    row = DeadLetter.model_validate(
        {
            "id": "x",
            "name": "demo.echo",
            "queue": "default",
            "state": "DEAD",
            "attempts": 1,
            "last_error": None,
            "finished_at": "2030-01-02T05:04:05+02:00",
        }
    )
    assert row.model_dump(mode="json")["finished_at"] == "2030-01-02T03:04:05Z"


# ---- request id and Host --------------------------------------------------------------


@pytest.mark.parametrize(
    "incoming",
    ["has space", "new\nline", "x" * (REQUEST_ID_MAX_LENGTH + 1), "café", "a;b", "<script>"],
)
def test_an_unsafe_request_id_is_replaced(client: TestClient, incoming: str) -> None:
    response = client.post(TASKS, json=ECHO, headers={"X-Request-ID": incoming.encode()})
    assert response.status_code == 202, response.text
    request_id = response.headers["x-request-id"]
    assert FRESH_ID.fullmatch(request_id), request_id
    with session_scope() as session:
        record = session.get(TaskRecord, response.json()["id"])
        assert record is not None
        assert record.request_id == request_id


def test_a_safe_request_id_is_kept(client: TestClient) -> None:
    incoming = "Req-1.a_b" + "x" * (REQUEST_ID_MAX_LENGTH - 9)
    response = client.get("/healthz", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] == incoming


def test_only_trusted_hosts_are_answered() -> None:
    settings = Settings(api_trusted_hosts=("tasks.example.com",))
    headers = {"X-API-Key": ADMIN_KEY}
    with TestClient(create_app(settings), headers=headers) as client:
        evil = client.post(TASKS, json=ECHO, headers={"Host": "evil.example"})
        good = client.post(TASKS, json=ECHO, headers={"Host": "tasks.example.com"})
        probes = [client.get(path, headers={"Host": "10.1.2.3:8000"}) for path in PLATFORM]
    assert evil.status_code == 400
    assert "evil" not in evil.text
    assert good.status_code == 202, good.text
    assert good.headers["location"].startswith("http://tasks.example.com/")
    assert good.json()["status_url"] == good.headers["location"]
    assert [probe.status_code for probe in probes] == [200, 200, 200]


PLATFORM = ("/healthz", "/readyz", "/metrics")


# ---- metrics --------------------------------------------------------------------------


def test_rejected_task_names_share_one_label(client: TestClient) -> None:
    names = [f"random.{uuid.uuid4().hex}\x01" for _ in range(20)]
    before = sample("tasks_submitted_total", {"task": UNKNOWN, "outcome": "rejected"})
    for name in names:
        assert client.post(TASKS, json={"name": name}).status_code == 422
    after = sample("tasks_submitted_total", {"task": UNKNOWN, "outcome": "rejected"})
    assert after - before == len(names)
    exposed = client.get("/metrics").text
    assert "random." not in exposed


def test_an_odd_method_and_an_unknown_path_get_bounded_labels(client: TestClient) -> None:
    labels = {"method": UNKNOWN, "route": "unmatched", "status": "404"}
    before = sample("http_requests_total", labels)
    client.request("FROBNICATE", "/no/such/path")
    assert sample("http_requests_total", labels) - before == 1


def test_a_client_that_leaves_mid_body_is_not_a_server_error() -> None:
    """A disconnect while the body is read: no answer, counted as 499, not as 500."""
    api = create_app()
    labels = {"method": "POST", "route": "unmatched", "status": str(CLIENT_CLOSED)}
    errors = {**labels, "status": "500"}
    before = sample("http_requests_total", labels)
    errors_before = sample("http_requests_total", errors)
    incoming: list[Message] = [
        {"type": "http.request", "body": b'{"name": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": TASKS,
        "raw_path": TASKS.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    asyncio.run(api(scope, receive, send))
    assert sent == []
    assert sample("http_requests_total", labels) - before == 1
    assert sample("http_requests_total", errors) == errors_before


# ---- headers and docs -----------------------------------------------------------------


def test_api_answers_carry_the_security_headers(client: TestClient) -> None:
    for response in (client.post(TASKS, json=ECHO), client.get(f"{TASKS}/{uuid.uuid4()}")):
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value


def test_docs_are_served_without_a_cdn_under_their_own_policy(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources, page.text
    for source in sources:
        assert source.startswith("/docs-assets/"), source
        assert client.get(source).status_code == 200, source
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    (script,) = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in policy
    assert client.get("/redoc").status_code == 404


def test_docs_can_be_turned_off() -> None:
    with TestClient(create_app(Settings(api_docs=False))) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/openapi.json").status_code == 404


# ---- the schema -----------------------------------------------------------------------


def test_the_schema_documents_every_answer(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            documented = set(operation["responses"])
            assert {"400", "413", "415", "500"} <= documented, (method, path, documented)
    submit = schema["paths"][TASKS]["post"]["responses"]
    assert {"202", "422", "503"} <= set(submit)


def test_the_schema_says_countdown_and_eta_exclude_each_other(client: TestClient) -> None:
    submission = client.get("/openapi.json").json()["components"]["schemas"]["TaskSubmission"]
    assert set(submission["not"]["required"]) == {"countdown", "eta"}
    both = {**ECHO, "countdown": 1, "eta": "2030-01-01T00:00:00Z"}
    assert_error(client.post(TASKS, json=both), 422, "not both")
