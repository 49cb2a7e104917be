"""The ledger on real processes: a real worker, real Redis + Sentinel and this project's
database server (PostgreSQL, MariaDB or a SQLite file), everything started through
deploy/entrypoints/ (R14, R21, R29, R30, R33, R34).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from tests.harness.api import ApiClient
from tests.harness.databases import Database
from tests.harness.probes import (
    effects,
    ledger,
    queue_keys,
    queue_length,
    run_python,
    wait_ledger,
    wait_until,
)
from tests.harness.processes import run_command
from tests.harness.redis import RedisDeployment
from tests.harness.stack import Stack, StackOptions, venv_bin

# Short ledger timings, through the same settings users have.
LEDGER_SETTINGS = {
    "RECONCILE_INTERVAL": "2",
    "RECONCILE_QUEUED_AFTER": "3",
    "RECONCILE_PUBLISHED_AFTER": "8",
    "LEDGER_MAX_ATTEMPTS": "4",
    "TASK_MAX_RETRIES": "2",
    "PUBLISH_RETRY_MAX_RETRIES": "3",
    "BEAT_RELOAD_INTERVAL": "1",
    "BEAT_LEASE_SECONDS": "4",
    "API_TASK_ALLOWLIST": "demo.echo,demo.record_effect,demo.fail,demo.flaky,demo.crash",
}


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    return StackOptions(env=dict(LEDGER_SETTINGS))


def effects_with_key(database: Database, key: str) -> int:
    column = "`key`" if database.kind == "mysql" else '"key"'
    return int(database.query(f"SELECT COUNT(*) FROM demo_effects WHERE {column} = '{key}'")[0][0])


def send_copy(stack: Stack, task_id: str, name: str, kwargs: dict[str, Any]) -> None:
    """Publish another message with the same id and no mark, as a retried publish could."""
    run_python(
        stack,
        f"from {stack.package}.celery_app import app\n"
        f"app.send_task({name!r}, kwargs={kwargs!r}, task_id={task_id!r})\n",
    )


def redispatch(stack: Stack, task_id: str) -> None:
    """Send the row's message again exactly as the reconcile job does."""
    run_python(
        stack,
        f"from {stack.package}.celery_app import app\n"
        f"from {stack.package}.ledger.db import session_scope\n"
        f"from {stack.package}.ledger.models import TaskRecord\n"
        f"from {stack.package}.ledger.publish import publish\n"
        "with session_scope() as session:\n"
        f"    row = session.get(TaskRecord, {task_id!r})\n"
        "publish(app, row)\n",
    )


@pytest.mark.reliability("R33")
def test_a_task_walks_through_its_states_in_the_ledger(api: ApiClient, database: Database) -> None:
    task_id = api.submit_ok("demo.flaky", {"failures": 1})
    row = wait_ledger(database, task_id, {"SUCCEEDED"})
    assert row["attempts"] == "2"  # the first run and its retry
    assert row["dispatches"] == "1"
    assert row["published_at"]
    assert row["started_at"]
    assert row["finished_at"]
    body = api.status(task_id).json()
    assert body["state"] == "SUCCEEDED"
    assert body["celery_state"] == "SUCCESS"
    assert "transient failure 1 of 1" in body["last_error"]


@pytest.mark.reliability("R21")
def test_the_same_message_delivered_twice_has_one_side_effect(
    api: ApiClient, stack: Stack, database: Database
) -> None:
    """A re-dispatched copy is dropped before the pool; an unmarked one by the claim."""
    worker = stack.worker("default")
    dispatched_again = api.submit_ok("demo.record_effect", {"key": "dispatched-again"})
    unmarked = api.submit_ok("demo.record_effect", {"key": "unmarked-copy"})
    wait_ledger(database, dispatched_again, {"SUCCEEDED"})
    wait_ledger(database, unmarked, {"SUCCEEDED"})
    redispatch(stack, dispatched_again)
    send_copy(stack, unmarked, "demo.record_effect", {"key": "unmarked-copy"})
    worker.wait_for_log(
        rf'"event": "task_deduplicated", "task_id": "{dispatched_again}"', timeout=30
    )
    worker.wait_for_log(rf"Task demo\.record_effect\[{unmarked}\] ignored", timeout=30)
    for task_id in (dispatched_again, unmarked):
        assert effects(database, task_id) == 1
        assert ledger(database, task_id)["attempts"] == "1"


@pytest.mark.reliability("R02", "R14")
def test_a_poison_task_goes_dead_after_the_attempt_limit(
    api: ApiClient, database: Database, redis_deployment: RedisDeployment
) -> None:
    task_id = api.submit_ok("demo.crash", {"until_attempt": 20})
    row = wait_ledger(database, task_id, {"DEAD"}, timeout=90)
    assert int(row["attempts"]) == int(LEDGER_SETTINGS["LEDGER_MAX_ATTEMPTS"]) + 1
    listed = api.get("/api/v1/dead-letters?limit=500").json()
    assert task_id in [item["id"] for item in listed]
    # The copy is published right after the DEAD row commits: give it a moment to land.
    wait_until(
        lambda: queue_length(redis_deployment.master_client(), "dead") >= 1,
        10,
        "the dead-letter copy never reached the dead queue",
    )


@pytest.mark.reliability("R02")
def test_a_task_whose_process_died_is_run_again_and_succeeds(
    api: ApiClient, database: Database
) -> None:
    task_id = api.submit_ok("demo.crash", {"until_attempt": 2})
    row = wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=60)
    assert row["attempts"] == "2"


@pytest.mark.reliability("R14")
def test_a_dead_letter_is_replayed_as_a_fresh_attempt(api: ApiClient, database: Database) -> None:
    dead_id = api.submit_ok("demo.fail", {"reason": "always"})
    wait_ledger(database, dead_id, {"DEAD"}, timeout=60)
    replay = api.http.post(f"/api/v1/dead-letters/{dead_id}/replay")
    assert replay.status_code == 202, replay.text
    fresh_id = replay.json()["id"]
    assert fresh_id != dead_id
    row = wait_ledger(database, fresh_id, {"DEAD"}, timeout=60)
    assert row["replay_of"] == dead_id
    assert ledger(database, dead_id)["state"] == "DEAD"  # history kept
    again = api.http.post(f"/api/v1/tasks/{fresh_id}/replay")
    assert again.status_code in {404, 405}
    not_dead = api.submit_ok("demo.echo", {"message": "fine"})
    wait_ledger(database, not_dead, {"SUCCEEDED"})
    assert api.http.post(f"/api/v1/dead-letters/{not_dead}/replay").status_code == 409


@pytest.mark.reliability("R34")
def test_reconcile_redispatches_a_message_lost_behind_the_ledger(
    api: ApiClient, stack: Stack, database: Database, redis_deployment: RedisDeployment
) -> None:
    worker = stack.worker("default")
    with worker.supervision_paused():
        worker.kill(signal.SIGTERM, group=False)
        worker.wait_for_exit(30)
        task_id = api.submit_ok("demo.record_effect", {"key": "lost-in-failover"})
        assert ledger(database, task_id)["state"] == "PUBLISHED"
        # What a failover can do: the acknowledged write never reached the new master.
        client = redis_deployment.master_client()
        keys = queue_keys(client, "default")
        assert sum(client.llen(key) for key in keys) >= 1
        client.delete(*keys)
        wait_until(
            lambda: int(ledger(database, task_id)["dispatches"]) >= 2,
            timeout=30,
            what="reconcile did not re-dispatch the lost task",
        )
    # Supervision restarts the worker on leaving the block.
    stack.wait_worker_ready("worker-default")
    wait_ledger(database, task_id, {"SUCCEEDED"})
    assert effects(database, task_id) == 1
    assert "ledger_redispatches_total" in api.metrics()


@pytest.mark.reliability("R29", "R30")
def test_two_beats_run_a_schedule_edited_at_run_time_once(stack: Stack, database: Database) -> None:
    second_beat = stack.start_extra("beat")
    try:
        every = 2.0
        run_command(
            [
                str(venv_bin() / "python"),
                "-m",
                f"{stack.package}.ledger.cli",
                "periodic",
                "set",
                "probe",
                "demo.record_effect",
                "--every",
                str(every),
                "--kwargs",
                json.dumps({"key": "beat-probe"}),
            ],
            env=stack.env,
            cwd=stack.run_dir,
        )
        wait_until(
            lambda: effects_with_key(database, "beat-probe") >= 1, 20, "the new entry never ran"
        )
        start, first = time.monotonic(), effects_with_key(database, "beat-probe")
        time.sleep(12)
        elapsed, runs = time.monotonic() - start, effects_with_key(database, "beat-probe") - first
        expected = elapsed / every
        # Two schedulers would double this; margins for start-up and reload jitter.
        assert expected - 3 <= runs <= expected + 1, (runs, expected)
    finally:
        second_beat.stop()


@pytest.mark.reliability("R33", "R34")
def test_broker_down_at_submit_is_accepted_as_queued_and_runs_once_it_is_back(
    api: ApiClient, database: Database, redis_deployment: RedisDeployment
) -> None:
    nodes = redis_deployment.data_nodes()
    for node in nodes:
        node.process.kill(signal.SIGKILL)
        node.process.wait_for_exit(10)
    try:
        response = api.submit("demo.record_effect", {"key": "broker-down"})
        assert response.status_code == 202, response.text
        assert response.json()["state"] == "QUEUED"
        task_id = response.json()["id"]
        assert ledger(database, task_id)["state"] == "QUEUED"
    finally:
        for node in nodes:
            node.process.respawn()
    redis_deployment.wait_healthy(timeout=60)
    wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=90)
    assert effects(database, task_id) == 1
