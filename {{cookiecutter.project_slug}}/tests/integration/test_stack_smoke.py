"""Smoke test of the real stack: tasks submitted over HTTP reach SUCCESS on their queue's
workers, the platform endpoints answer, and a teardown leaves no process behind."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from tests.harness.api import ApiClient, metric_value
from tests.harness.databases import database_for
from tests.harness.probes import run_python
from tests.harness.processes import ProcessIdentity
from tests.harness.redis import RedisSentinelCluster
from tests.harness.stack import Stack, StackOptions
from tests.harness.waiting import wait_until

TASK_TIMEOUT = 30
# How long the master refuses writes after the first refusal in the NOREPLICAS test: a
# short failover's wait.
REFUSING_S = 1.5


@pytest.mark.reliability("R31", "R45")
def test_stack_is_ready_and_every_worker_answers_ping(stack: Stack, api: ApiClient) -> None:
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()
    assert checks["broker"] == checks["result_backend"] == "ok", checks
    assert set(checks.values()) == {"ok"}, checks
    assert api.get("/healthz").status_code == 200
    answer = stack.ping_workers()
    for group in stack.options.groups:
        assert stack.worker_nodename(group) in answer, answer


@pytest.mark.reliability("R10", "R22")
@pytest.mark.parametrize(
    ("name", "kwargs", "queue"),
    [
        ("demo.echo", {"message": "hello"}, "default"),
        ("demo.urgent_ping", {}, "high"),
    ],
)
def test_a_task_runs_on_the_workers_of_its_queue(
    stack: Stack, api: ApiClient, name: str, kwargs: dict[str, str], queue: str
) -> None:
    response = api.submit(name, kwargs)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["queue"] == queue
    assert response.headers["Location"].endswith(accepted["id"])

    body = api.wait_for_state(accepted["id"], "SUCCESS", timeout=TASK_TIMEOUT)

    if name == "demo.echo":
        assert body["result"] == "hello"
    # The worker of that queue group ran it (its JSON log lines carry the task id).
    stack.worker(queue).wait_for_log(accepted["id"], timeout=5, since=0)


@pytest.mark.reliability("R10", "R42")
def test_a_report_fans_out_as_a_chord_on_the_low_workers(stack: Stack, api: ApiClient) -> None:
    size, chunk_size = 1000, 250
    response = api.submit("demo.reports.build_report", {"size": size, "chunk_size": chunk_size})
    assert response.status_code == 202, response.text
    assert response.json()["queue"] == "low"

    body = api.wait_for_state(response.json()["id"], "SUCCESS", timeout=TASK_TIMEOUT)

    assert body["result"] == {"total": sum(n * n for n in range(size)), "chunks": 4}
    stack.worker("low").wait_for_log("demo.reports.sum_chunk", timeout=5, since=0)


def on_the_result_backend(stack: Stack, code: str) -> str:
    """Run `code` with the project's result backend as `backend`, a new `task_id`, and the
    name of each command it sends in `sent`."""
    return run_python(
        stack,
        "import json, time\n"
        f"from {stack.package}.celery_app import app\n"
        "backend, sent = app.backend, []\n"
        "execute = backend.client.execute_command\n"
        "def counted(*args, **options):\n"
        "    sent.append(str(args[0]).upper())\n"
        "    return execute(*args, **options)\n"
        "backend.client.execute_command = counted\n"
        f"task_id = {str(uuid.uuid4())!r}\n" + code,
    )


@pytest.mark.reliability("R22")
def test_a_result_write_is_one_script_call_that_never_overwrites_a_success(
    stack: Stack,
) -> None:
    """The STARTED and final writes without Celery's GET before each; SUCCESS stays."""
    answer = on_the_result_backend(
        stack,
        "backend.store_result(task_id, {'pid': 1}, 'STARTED')\n"
        "backend.store_result(task_id, 'first', 'SUCCESS')\n"
        "backend.store_result(task_id, {'pid': 2}, 'STARTED')\n"
        "backend.store_result(task_id, ValueError('late copy'), 'FAILURE')\n"
        "writes = list(sent)\n"
        "meta = backend.get_task_meta(task_id)\n"
        "print(json.dumps([type(backend).__name__, writes, meta['status'], meta['result']]))\n",
    )
    backend, writes, status, result = json.loads(answer.strip().splitlines()[-1])
    assert backend.startswith("OneTrip"), backend
    # Four writes, four round trips. On a server that has not seen the script yet, the
    # first EVALSHA is refused (NOSCRIPT) and repeated after a SCRIPT LOAD.
    assert set(writes) <= {"EVALSHA", "SCRIPT LOAD"}, writes
    assert writes.count("EVALSHA") - writes.count("SCRIPT LOAD") == 4, writes
    assert (status, result) == ("SUCCESS", "first")


def noreplicas_refusals(admin: redis.Redis) -> int:
    """How many commands the server has refused with NOREPLICAS (INFO errorstats)."""
    return int(admin.info("errorstats").get("errorstat_NOREPLICAS", {}).get("count", 0))


@pytest.mark.reliability("R22")
def test_a_result_write_waits_while_the_master_refuses_writes_for_want_of_replicas(
    stack: Stack,
) -> None:
    """After a failover a master with min-replicas-to-write answers NOREPLICAS until its
    replicas reattach. A task's STARTED write that failed on it would end the task unrun."""
    admin = stack.redis.master_client(decode_responses=True)
    setting = str(admin.config_get("min-replicas-to-write")["min-replicas-to-write"])
    refused_before = noreplicas_refusals(admin)

    def allow_writes_a_while_after_the_first_refusal() -> None:
        try:
            wait_until(lambda: noreplicas_refusals(admin) > refused_before, 30, "a refused write")
            time.sleep(REFUSING_S)
        finally:
            admin.config_set("min-replicas-to-write", setting)

    # More replicas than the deployment has: every write is refused until the reset.
    admin.config_set("min-replicas-to-write", len(stack.redis.data_nodes()))
    reset = threading.Thread(target=allow_writes_a_while_after_the_first_refusal)
    reset.start()
    try:
        answer = on_the_result_backend(
            stack,
            "started = time.monotonic()\n"
            "backend.store_result(task_id, {'pid': 1}, 'STARTED')\n"
            "took = time.monotonic() - started\n"
            "print(json.dumps([backend.get_task_meta(task_id)['status'], took]))\n",
        )
    finally:
        reset.join()
    refused = noreplicas_refusals(admin) - refused_before
    admin.close()
    status, took = json.loads(answer.strip().splitlines()[-1])
    assert refused >= 1, "no write was refused: nothing was tested"
    assert status == "STARTED"
    assert took >= REFUSING_S * 0.5, took


def test_metrics_count_each_submission(api: ApiClient) -> None:
    labels = {"task": "demo.echo"}  # whatever the outcome label, one more submission
    before = metric_value(api.metrics(), "tasks_submitted_total", labels)

    task_id = api.submit_ok("demo.echo", {"message": "counted"})

    assert metric_value(api.metrics(), "tasks_submitted_total", labels) == before + 1
    api.wait_for_state(task_id, "SUCCESS", timeout=TASK_TIMEOUT)


def test_teardown_leaves_no_process_running(tmp_path: Path, database_kind: str) -> None:
    """A whole stack (Redis + Sentinel, database, worker, API) started and torn down by the
    same context managers the fixtures use: none of the PIDs it ever had survives."""
    seen: set[ProcessIdentity] = set()
    options = StackOptions(groups=("default",), beat=False)
    with (
        RedisSentinelCluster(tmp_path / "redis") as cluster,
        database_for(database_kind, tmp_path / "db") as database,
        Stack(
            redis=cluster, database=database, workdir=tmp_path / "stack", options=options
        ) as stack,
        stack.api_client() as api,
    ):
        api.wait_for_state(api.submit_ok("demo.echo", {"message": "x"}), "SUCCESS", TASK_TIMEOUT)
        pool = set(stack.worker("default").children())
        assert pool, "a prefork worker has pool processes"
        seen = stack.identities() | cluster.identities() | database.identities()
        assert pool <= {identity.pid for identity in seen}

    survivors = [identity for identity in seen if identity.alive()]
    assert survivors == [], f"still running after teardown: {survivors}"
