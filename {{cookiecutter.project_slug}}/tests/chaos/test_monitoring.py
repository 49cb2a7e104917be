"""What operators see: result expiry,{% if cookiecutter.use_flower == "yes" %} task events in Flower,{% endif %} backlog, ping, and beat's
entries arriving on their queues (R25, R26, R29,{% if cookiecutter.use_flower == "yes" %} R35,{% endif %} R43, R45).

RESULT_EXPIRES=3, BEAT_TICK_SECONDS=2 (the interval entry) and BEAT_REPORT_CRONTAB
"* * * * *" (the crontab entry fires at the next minute).
"""

from __future__ import annotations

import signal
import time
{%- if cookiecutter.use_flower == "yes" %}
from collections.abc import Iterator
{%- endif %}
from typing import Any

{% if cookiecutter.use_flower == "yes" -%}
import httpx
{% endif -%}
import pytest

from tests.chaos.conftest import ChaosResults
from tests.harness.api import ApiClient
from tests.harness.databases import Database
from tests.harness.probes import (
    log_events,
    queue_length,
    redis_client,
    restart_and_wait,
    wait_ledger,
    wait_until,
)
from tests.harness.stack import Stack, StackOptions

RESULT_EXPIRES = 3
BEAT_TICK = 2.0
SETTINGS = {
    "RESULT_EXPIRES": str(RESULT_EXPIRES),
    "BEAT_TICK_SECONDS": str(BEAT_TICK),
    "BEAT_REPORT_CRONTAB": "* * * * *",
}


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
{%- if cookiecutter.use_flower == "yes" %}
    return StackOptions(env=dict(SETTINGS), flower=True)
{%- else %}
    return StackOptions(env=dict(SETTINGS))
{%- endif %}


{%- if cookiecutter.use_flower == "yes" %}


@pytest.fixture(scope="module")
def flower(stack: Stack) -> Iterator[httpx.Client]:
    """Flower's HTTP API with the stack's basic-auth credentials."""
    assert stack.flower_url is not None
    with httpx.Client(base_url=stack.flower_url, auth=stack.flower_auth, timeout=20) as client:
        yield client
{%- endif %}


def started_tasks(stack: Stack, group: str, name: str) -> list[dict[str, Any]]:
    return [
        record
        for record in log_events(stack.worker(group))
        if record.get("event") == "task_started" and record.get("task_name") == name
    ]


@pytest.mark.reliability("R25")
def test_results_expire_after_result_expires(stack: Stack, api: ApiClient) -> None:
    """The result key gets a TTL of RESULT_EXPIRES (3 s here; 3 days by default) and is
    gone once it runs out; the ledger keeps the task's state."""
    task_id = api.submit_ok("demo.echo", {"message": "short-lived"})
    api.wait_for_state(task_id, "SUCCESS", timeout=30)
    results = redis_client(stack, db=1)
    key = f"celery-task-meta-{task_id}"
    ttl = int(results.ttl(key))
    assert 0 < ttl <= RESULT_EXPIRES, ttl
    wait_until(lambda: not results.exists(key), RESULT_EXPIRES + 5, "the result never expired")
    body = api.status(task_id).json()
    assert body["state"] == "SUCCEEDED"
    assert body["celery_state"] == "PENDING"  # Celery forgot it; the ledger did not


@pytest.mark.reliability("R45")
def test_every_worker_answers_inspect_ping_and_reports_its_queue(stack: Stack) -> None:
    answer = stack.ping_workers()
    for group in stack.options.groups:
        assert stack.worker_nodename(group) in answer, answer
    destinations = ",".join(stack.worker_nodename(g) for g in stack.options.groups)
    queues = stack.celery(
        "inspect", "active_queues", "--timeout=10", f"--destination={destinations}"
    )
    for group in stack.options.groups:
        assert f"'name': '{group}'" in queues, queues


{%- if cookiecutter.use_flower == "yes" %}


@pytest.mark.reliability("R26", "R35")
def test_flower_is_behind_auth_and_sees_workers_and_task_events(
    stack: Stack, api: ApiClient, flower: httpx.Client
) -> None:
    anonymous = httpx.get(str(flower.base_url.join("/api/workers")), timeout=20)
    assert anonymous.status_code == 401
    workers = flower.get("/api/workers", params={"refresh": "1"})
    assert workers.status_code == 200, workers.text
    for group in stack.options.groups:
        assert stack.worker_nodename(group) in workers.json()
    # The worker banners: events on from the configuration, not only because Flower asks.
    for group in stack.options.groups:
        assert "task events: ON" in stack.worker(group).log_text()

    task_id = api.submit_ok("demo.echo", {"message": "seen by flower"})
    wait_until(
        lambda: flower.get("/api/tasks").json().get(task_id, {}).get("state") == "SUCCESS",
        20,
        "the task's events never reached Flower",
    )
    task = flower.get(f"/api/task/info/{task_id}").json()
    assert task["worker"] == stack.worker_nodename("default"), task


@pytest.mark.reliability("R35")
def test_flower_shows_its_metrics_only_after_login_and_sends_no_task(
    flower: httpx.Client,
) -> None:
    """/metrics names tasks and workers: behind the login (flower_server.py). Flower is a
    dashboard: a task sent from it would bypass the API's allowlist and the ledger."""
    anonymous = httpx.get(str(flower.base_url.join("/metrics")), timeout=20)
    assert anonymous.status_code == 401, anonymous.text[:200]
    metrics = flower.get("/metrics")
    assert metrics.status_code == 200, metrics.text[:200]
    assert "flower_events_total" in metrics.text
    assert httpx.get(str(flower.base_url.join("/healthcheck")), timeout=20).status_code == 200

    for endpoint in ("async-apply", "send-task"):
        sent = flower.post(f"/api/task/{endpoint}/demo.echo", json={"kwargs": {"message": "x"}})
        assert sent.status_code == 403, (endpoint, sent.text[:200])
{%- endif %}


@pytest.mark.reliability("R26", "R43")
def test_a_backlog_is_visible_while_the_workers_are_down(
    stack: Stack,
    api: ApiClient,
    database: Database,
{%- if cookiecutter.use_flower == "yes" %}
    flower: httpx.Client,
{%- endif %}
    chaos_results: ChaosResults,
) -> None:
    """Default workers stopped: five queued tasks show up as LLEN of `default`{% if cookiecutter.use_flower == "yes" %},
    as Flower's queue length, and in Flower's task list already (task-sent events from
    the producer, task_send_sent_event){% endif %}.
    They drain once the workers are back."""
{%- if cookiecutter.use_flower == "yes" %}
    flower.get("/api/workers", params={"refresh": "1"}).raise_for_status()
{%- endif %}
    worker = stack.worker("default")
    backlog = 5
    with worker.supervision_paused():
        restarts = worker.restarts
        worker.kill(signal.SIGTERM, group=False)
        worker.wait_for_exit(30)
        task_ids = [api.submit_ok("demo.echo", {"message": f"backlog-{n}"}) for n in range(backlog)]
        llen = queue_length(redis_client(stack), "default")
        assert llen == backlog, llen
{%- if cookiecutter.use_flower == "yes" %}
        lengths = flower.get("/api/queues/length").json()["active_queues"]
        flower_length = {queue["name"]: queue["messages"] for queue in lengths}
        assert flower_length.get("default") == backlog, lengths
        wait_until(
            lambda: set(task_ids) <= set(flower.get("/api/tasks").json()),
            15,
            "task-sent events of the queued tasks never reached Flower",
        )
{%- endif %}
    restart_and_wait(stack, "worker-default", restarts)
    for task_id in task_ids:
        wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=30)
    assert queue_length(redis_client(stack), "default") == 0
{%- if cookiecutter.use_flower == "yes" %}
    chaos_results.record("R43 backlog", llen=llen, flower_queue_length=flower_length["default"])
{%- else %}
    chaos_results.record("R43 backlog", llen=llen)
{%- endif %}


@pytest.mark.reliability("R29")
def test_beat_sends_its_interval_entry_to_the_high_queue(stack: Stack) -> None:
    name = "demo.urgent_ping"
    before = len(started_tasks(stack, "high", name))
    window = 5 * BEAT_TICK
    time.sleep(window)
    fired = len(started_tasks(stack, "high", name)) - before
    assert window / BEAT_TICK - 2 <= fired <= window / BEAT_TICK + 1, fired
    for other in ("default", "low"):
        assert started_tasks(stack, other, name) == []


@pytest.mark.reliability("R29")
def test_beat_sends_its_crontab_entry_to_the_low_queue(
    stack: Stack, chaos_results: ChaosResults
) -> None:
    """Due at every minute boundary: the first one after now comes within a minute (it
    may already have fired while the tests before this one ran)."""
    started = time.time()
    remaining = 60 - started % 60 + 15
    name = "demo.reports.build_report"
    wait_until(
        lambda: started_tasks(stack, "low", name),
        remaining,
        "the crontab entry never ran on the low workers",
        step=1,
    )
    assert started_tasks(stack, "default", name) == []
    assert started_tasks(stack, "high", name) == []
    chaos_results.record("R29 crontab", waited_seconds=round(time.time() - started, 1))
