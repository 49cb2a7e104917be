"""Sentry end to end (R38): the real API, workers and beat report to a local receiver.

One stack for the module, its SENTRY_DSN pointing at `tests/harness/sentry_receiver.py`,
traces sampled at 1. The receiver decodes what arrives (gzip, envelopes) and the tests
search it: task errors with their context, an API error with its request id, beat
check-ins, one trace across API and worker, no secret anywhere, and a Sentry that stops
answering costing the service nothing it can feel.

Events go out from a background thread, one queue per process, in the order they were
captured. A run's transaction is sent after everything the run captured, so once both
transactions of a task's two runs arrived, any error event of those runs has arrived too.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from {{ cookiecutter.package_name }}.observability.sentry import SHUTDOWN_TIMEOUT
from tests.harness.api import TASKS, ApiClient
from tests.harness.probes import redis_client, run_python
from tests.harness.sentry_receiver import Item, SentryReceiver
from tests.harness.stack import Stack, StackOptions

WAIT = 30
BEARER_TOKEN = f"bearer-{secrets.token_hex(12)}"
ARGUMENT_SECRET = f"argument-{secrets.token_hex(12)}"
FLOWER_PASSWORD = f"flower-{secrets.token_hex(12)}"
DSN_KEY = f"dsnkey{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def sentry() -> Iterator[SentryReceiver]:
    with SentryReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack_options(sentry: SentryReceiver) -> StackOptions:
    return StackOptions(
        groups=("default", "high"),
        env={
            "SENTRY_DSN": sentry.dsn(DSN_KEY),
            "SENTRY_TRACES_SAMPLE_RATE": "1",
            # One retry: a failing task ends within seconds.
            "TASK_MAX_RETRIES": "1",
            # Beat sees rows added to its schedule within a second.
            "BEAT_RELOAD_INTERVAL": "1",
            "FLOWER_PASSWORD": FLOWER_PASSWORD,
        },
    )


def _post(api: ApiClient, name: str, kwargs: dict[str, Any], request_id: str) -> str:
    response = api.http.post(
        TASKS, json={"name": name, "kwargs": kwargs}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _runs_reported(sentry: SentryReceiver, task_id: str, runs: int) -> list[Item]:
    """Wait for the transactions of a task's `runs` runs; returns them."""
    return sentry.wait_for(
        lambda item: item.tags.get("task_id") == task_id,
        WAIT,
        f"transactions of task {task_id}",
        kind="transaction",
        count=runs,
    )


def _frames(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        frame
        for value in event.get("exception", {}).get("values", [])
        for frame in (value.get("stacktrace") or {}).get("frames", [])
    ]


@pytest.mark.reliability("R38")
def test_a_task_failing_for_good_is_one_event_and_a_retried_success_none(
    stack: Stack, api: ApiClient, sentry: SentryReceiver
) -> None:
    request_id = f"sentry-fail-{uuid.uuid4().hex[:12]}"
    failing = _post(api, "demo.fail", {"reason": "broken for good"}, request_id)
    flaky = _post(api, "demo.flaky", {"failures": 1}, f"sentry-flaky-{uuid.uuid4().hex[:12]}")
    api.wait_for_state(failing, "FAILURE", timeout=WAIT)
    api.wait_for_state(flaky, "SUCCESS", timeout=WAIT)
    _runs_reported(sentry, failing, 2)
    _runs_reported(sentry, flaky, 2)

    # The first run raised Retry, which the SDK takes for control flow (no event); the
    # second ran out of retries and re-raised the error: one event, not one per attempt,
    # and not a second one for the "task failed" log line of the failure hook.
    events = sentry.find(lambda item: item.tags.get("task_id") == failing, kind="event")
    assert len(events) == 1, [e.payload.get("message") or e.payload.get("logger") for e in events]
    event = events[0]
    exception = event.payload["exception"]["values"][-1]
    assert exception["type"] == "RetryableError"
    assert exception["value"] == "broken for good"
    assert exception["mechanism"]["type"] == "celery"
    assert any(
        frame.get("module") == f"{stack.package}.tasks.demo" and frame.get("function") == "fail"
        for frame in _frames(event.payload)
    ), _frames(event.payload)
    tags = event.tags
    assert tags["task_id"] == failing
    assert tags["task_name"] == "demo.fail"
    assert tags["queue"] == "default"
    assert tags["attempt"] == "2"
    assert tags["request_id"] == request_id
    assert tags["component"] == "worker"
    # A retried task that then succeeds is no error at all.
    assert sentry.find(lambda item: item.tags.get("task_id") == flaky, kind="event") == []


@pytest.mark.reliability("R38")
def test_an_unhandled_api_error_is_reported_and_answered_as_json(
    stack: Stack, api: ApiClient, sentry: SentryReceiver
) -> None:
    """A real fault no route maps: a result the backend cannot decode (written by a
    foreign producer, or corrupted) makes GET /api/v1/tasks/{id} raise."""
    task_id = str(uuid.uuid4())
    redis_client(stack, db=1).set(f"celery-task-meta-{task_id}", b"{not json")
    request_id = f"sentry-api-{uuid.uuid4().hex[:12]}"

    response = api.http.get(
        f"{TASKS}/{task_id}",
        headers={"X-Request-ID": request_id, "Authorization": f"Bearer {BEARER_TOKEN}"},
    )

    assert response.status_code == 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["request_id"] == request_id
    assert response.headers["x-request-id"] == request_id
    (event,) = sentry.wait_for(
        lambda item: item.tags.get("request_id") == request_id,
        WAIT,
        "the API error event",
        kind="event",
    )
    payload = event.payload
    assert payload["transaction"] == "/api/v1/tasks/{task_id}"
    assert event.tags["component"] == "api"
    assert payload["request"]["method"] == "GET"
    assert urlsplit(payload["request"]["url"]).path == f"{TASKS}/{task_id}"
    assert payload["exception"]["values"], payload
    assert any(
        str(frame.get("module", "")).startswith(f"{stack.package}.api")
        for frame in _frames(payload)
    ), _frames(payload)


# Entries added at run time (R30), each overdue so beat sends it within a second. Sentry
# Crons takes whole-minute intervals only (the SDK skips shorter ones with a warning).
PERIODIC_ROWS = (
    "from datetime import UTC, datetime, timedelta\n"
    "from {pkg}.ledger.db import session_scope\n"
    "from {pkg}.ledger.models import PeriodicTask\n"
    "overdue = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)\n"
    "with session_scope() as session:\n"
    "    session.add(PeriodicTask(name='sentry-ok-tick', task='demo.urgent_ping',"
    " interval_seconds=60, kwargs=dict(), enabled=True, last_run_at=overdue))\n"
    "    session.add(PeriodicTask(name='sentry-failing-tick', task='demo.fail',"
    " interval_seconds=60, kwargs=dict(reason='periodic failure'), enabled=True,"
    " last_run_at=overdue))\n"
)


@pytest.mark.reliability("R38")
def test_beat_runs_check_in_and_a_failing_periodic_task_checks_in_error(
    stack: Stack, sentry: SentryReceiver
) -> None:
    def check_in(slug: str, status: str) -> Item:
        found = sentry.wait_for(
            lambda item: (
                item.payload.get("monitor_slug") == slug and item.payload.get("status") == status
            ),
            WAIT,
            f"{status} check-in of {slug}",
            kind="check_in",
        )
        return found[0]

    run_python(stack, PERIODIC_ROWS.format(pkg=stack.package))

    # Beat checks in_progress as it sends a run; the worker closes that check-in.
    started = check_in("sentry-ok-tick", "in_progress")
    ok = check_in("sentry-ok-tick", "ok")
    assert ok.payload["check_in_id"] == started.payload["check_in_id"]
    assert started.payload["monitor_config"]["schedule"] == {
        "type": "interval",
        "value": 1,
        "unit": "minute",
    }
    failing_started = check_in("sentry-failing-tick", "in_progress")
    error = check_in("sentry-failing-tick", "error")
    assert error.payload["check_in_id"] == failing_started.payload["check_in_id"]


@pytest.mark.reliability("R38")
def test_the_api_request_and_the_task_share_one_trace_with_ledger_spans(
    stack: Stack, api: ApiClient, sentry: SentryReceiver
) -> None:
    task_id = _post(api, "demo.echo", {"message": "traced"}, f"sentry-trace-{uuid.uuid4().hex}")
    api.wait_for_state(task_id, "SUCCESS", timeout=WAIT)
    (task,) = _runs_reported(sentry, task_id, 1)
    trace_id = task.trace_id
    assert trace_id, task.payload.get("contexts")
    assert task.payload["transaction"] == "demo.echo"

    (request,) = sentry.wait_for(
        lambda item: (
            item.trace_id == trace_id
            and item.payload.get("transaction") == TASKS
            and item.payload.get("request", {}).get("method") == "POST"
        ),
        WAIT,
        "the API transaction of the submission",
        kind="transaction",
    )
    request_spans = {span.get("op") for span in request.payload.get("spans", [])}
    assert "queue.submit.celery" in request_spans, request_spans
    ledger_spans = [
        span
        for span in task.payload.get("spans", [])
        if span.get("op") == "db" and "task_ledger" in str(span.get("description"))
    ]
    assert ledger_spans, [(s.get("op"), s.get("description")) for s in task.payload["spans"]]


def _configured_secrets(stack: Stack) -> dict[str, str]:
    """Every secret value the stack's processes were given, by where it came from."""
    env = dict(stack.env)
    for kind in ("worker", "beat", "api"):
        env.update({f"{kind}:{k}": v for k, v in stack.redis.credentials(kind).items()})
    found = {
        name: value
        for name, value in env.items()
        if value and any(word in name for word in ("PASSWORD", "SECRET", "TOKEN"))
    }
    database_password = urlsplit(env["DATABASE_URL"]).password
    assert database_password or env["DATABASE_URL"].startswith("sqlite"), "a server without one"
    if database_password:
        found["database password"] = database_password
    found.update(
        {
            "DATABASE_URL": env["DATABASE_URL"],
            "SENTRY_DSN": env["SENTRY_DSN"],
            "X-API-Key": stack.api_key,
            "Authorization": BEARER_TOKEN,
            "task argument": ARGUMENT_SECRET,
            "FLOWER_PASSWORD": FLOWER_PASSWORD,
        }
    )
    return found


def _around(raw: bytes, value: bytes, name: str) -> str:
    """Where a value was found, the value itself replaced by its name."""
    at = raw.index(value)
    return (
        raw[max(0, at - 150) : at + len(value) + 50]
        .replace(value, f"<{name}>".encode())
        .decode("utf-8", "replace")
    )


@pytest.mark.reliability("R38")
def test_no_secret_reaches_sentry(stack: Stack, sentry: SentryReceiver) -> None:
    """Every envelope received so far (and one more task error whose arguments hold a
    secret under a sensitive key) is searched for every secret value the stack has."""
    task_id = str(uuid.uuid4())
    run_python(
        stack,
        f"from {stack.package}.celery_app import app\n"
        f"app.send_task('demo.fail', task_id={task_id!r}, queue='default',"
        f" kwargs=dict(reason='visible', api_token={ARGUMENT_SECRET!r}))\n",
    )
    (event,) = sentry.wait_for(
        lambda item: item.tags.get("task_id") == task_id, WAIT, "the task's event", kind="event"
    )
    _runs_reported(sentry, task_id, 1)
    # The arguments show as the logs show them, the sensitive one masked (redact.py).
    arguments = event.payload["contexts"]["task"]["arguments"]
    assert "'reason': 'visible'" in arguments, arguments
    assert re.search(r"'api_token': '(\*\*\*|\[Filtered\])'", arguments), arguments

    raw = sentry.raw()
    kinds = {item.type for item in sentry.items()}
    assert {"event", "transaction", "check_in"} <= kinds, kinds
    assert sentry.errors == []
    leaked = {
        name: _around(raw, value.encode(), name)
        for name, value in _configured_secrets(stack).items()
        if value.encode() in raw
    }
    assert leaked == {}, f"secret values found in what Sentry received: {leaked}"
    # Also not JSON-escaped (a "/" or a quote inside a value is written differently).
    text = raw.decode("utf-8", "replace")
    escaped = {
        name
        for name, value in _configured_secrets(stack).items()
        if json.dumps(value)[1:-1] in text
    }
    assert escaped == set(), sorted(escaped)


@pytest.mark.reliability("R38")
def test_an_unreachable_sentry_costs_neither_throughput_nor_shutdown(
    stack: Stack, api: ApiClient, sentry: SentryReceiver
) -> None:
    """Generous bounds only (bench/sentry_cost.py measures): with Sentry accepting
    connections and never answering, tasks still complete, submissions stay quick, and a
    worker stops within the flush timeout of its processes plus a margin."""
    sentry.set_mode("hang")
    try:
        requests_before = sentry.requests
        latencies: list[float] = []
        task_ids: list[str] = []
        for number in range(20):
            started = time.monotonic()
            task_ids.append(api.submit_ok("demo.echo", {"message": f"unreachable {number}"}))
            latencies.append(time.monotonic() - started)
        failing = api.submit_ok("demo.fail", {"reason": "reported to nobody"})
        for task_id in task_ids:
            api.wait_for_state(task_id, "SUCCESS", timeout=WAIT)
        api.wait_for_state(failing, "FAILURE", timeout=WAIT)
        assert sentry.requests > requests_before, "the SDK did try to send"
        assert max(latencies) < 5, latencies

        worker = stack.worker("default")
        started = time.monotonic()
        worker.stop()
        stopped_in = time.monotonic() - started
    finally:
        sentry.set_mode("answer")
    # Warm shutdown (WORKER_SOFT_SHUTDOWN_TIMEOUT=2) + the children's and the main
    # process's flush (SHUTDOWN_TIMEOUT each) + a wide margin; SIGKILL comes at 20 s.
    assert stopped_in < 2 + 2 * SHUTDOWN_TIMEOUT + 8, stopped_in
    assert "did not stop within" not in worker.log_text()
