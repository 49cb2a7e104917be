"""Lost workers found in seconds (worker liveness, R46): a whole worker killed, a worker
paused past its deadline, and a long task on a live worker that must never run twice.

The visibility timeout is the production default (1800 s) and beat is off, so the
reconcile job never runs: every re-run here comes from the workers' heartbeats in the
ledger and their sweep (worker_liveness.py), never from kombu or reconcile. Two
`default` workers with one slot each; the one that took a task is the one hit.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.chaos.conftest import ChaosResults
from tests.harness.api import ApiClient
from tests.harness.databases import Database
from tests.harness.probes import (
    effects,
    ledger,
    log_events,
    parse_time,
    wait_ledger,
    wait_until,
)
from tests.harness.processes import SupervisedProcess
from tests.harness.stack import Stack, StackOptions

DEAD_AFTER = 15.0  # WORKER_DEAD_AFTER, the default
HEARTBEAT = 5.0  # WORKER_HEARTBEAT_INTERVAL, the default
# The bar: a task whose worker died runs again within 20 s.
RERUN_BOUND = 20.0
SETTINGS = {
    "VISIBILITY_TIMEOUT": "1800",
    "WORKER_DEFAULT_CONCURRENCY": "1",
    # Room for the 60 s task below.
    "TASK_SOFT_TIME_LIMIT": "80",
    "TASK_TIME_LIMIT": "90",
}
# The long-task scenario's workers judge each other five times faster.
FAST_LIVENESS = {"WORKER_HEARTBEAT_INTERVAL": "1", "WORKER_DEAD_AFTER": "5"}

pytestmark = pytest.mark.reliability("R46")


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    return StackOptions(env=dict(SETTINGS), groups=("default",), beat=False)


@pytest.fixture
def workers(stack: Stack) -> Iterator[dict[str, SupervisedProcess]]:
    """The module's worker and a second one, by node name; the second stops afterwards."""
    second = stack.start_extra("worker", "default", restart=False)
    # The extra's node name is its process name (start_extra passes --name).
    yield {
        stack.worker_nodename("default"): stack.worker("default"),
        f"{second.name}@{socket.gethostname()}": second,
    }
    second.stop()


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def redispatches(process: SupervisedProcess, task_id: str) -> list[str]:
    """The causes of every re-dispatch of the task this process logged."""
    return [
        record["cause"]
        for record in log_events(process)
        if record.get("event") == "reconcile_redispatch" and record.get("task_id") == task_id
    ]


def start_on_one(
    api: ApiClient,
    database: Database,
    workers: dict[str, SupervisedProcess],
    key: str,
    seconds: float,
) -> tuple[str, dict[str, str], SupervisedProcess, SupervisedProcess]:
    """A task running: its id, its STARTED row, the worker running it and the other one."""
    task_id = api.submit_ok("demo.record_effect", {"key": f"liveness-{key}", "seconds": seconds})
    first = wait_ledger(database, task_id, {"STARTED"}, timeout=30)
    (other,) = (process for name, process in workers.items() if name != first["worker"])
    return task_id, first, workers[first["worker"]], other


def test_a_task_whose_worker_died_runs_again_within_seconds_on_another_worker(
    stack: Stack,
    api: ApiClient,
    database: Database,
    workers: dict[str, SupervisedProcess],
    chaos_results: ChaosResults,
) -> None:
    task_id, first, victim, survivor = start_on_one(api, database, workers, "killed", 6)

    with victim.supervision_paused():
        restarts = victim.restarts
        killed_at = utcnow()  # the harness's database runs on this machine's clock
        victim.kill(signal.SIGKILL)  # main process and pool: nothing can requeue
        victim.wait_for_exit(10)
        row = wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=RERUN_BOUND + 30)
        assert row["worker"] != first["worker"], row
        assert row["attempts"] == "2", row
        assert effects(database, task_id) == 1
        assert redispatches(survivor, task_id) == ["worker_lost"]
    if victim is stack.worker("default"):
        victim.wait_for_restart(restarts, 60)
        stack.wait_worker_ready("worker-default")
    second_start = parse_time(row["started_at"])
    assert second_start is not None
    rerun_after = (second_start - killed_at).total_seconds()
    # At least one missed WORKER_DEAD_AFTER window minus a heartbeat; within the bar.
    assert DEAD_AFTER - HEARTBEAT - 1 < rerun_after < RERUN_BOUND, rerun_after
    chaos_results.record(
        "R46 whole worker killed, VT 1800 s",
        heartbeat_interval=HEARTBEAT,
        dead_after=DEAD_AFTER,
        rerun_after_kill_seconds=round(rerun_after, 2),
    )


def test_a_worker_paused_past_its_deadline_leaves_one_effect(
    stack: Stack,
    api: ApiClient,
    database: Database,
    workers: dict[str, SupervisedProcess],
    chaos_results: ChaosResults,
) -> None:
    """SIGSTOP longer than WORKER_DEAD_AFTER: the task runs again elsewhere; on SIGCONT the
    paused run goes on too. Both reach finish_in, whose transaction keeps one effect."""
    task_id, first, paused, other = start_on_one(api, database, workers, "paused", 8)
    offsets = {name: process.log_size() for name, process in workers.items()}

    paused.kill(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_until(
            lambda: ledger(database, task_id)["worker"] != first["worker"],
            DEAD_AFTER + HEARTBEAT + 10,
            "the paused worker's task never ran elsewhere",
        )
        # Declared dead counting from its last heartbeat; paused past the deadline itself.
        time.sleep(max(0.0, DEAD_AFTER + 1 - (time.monotonic() - stopped)))
    finally:
        paused.kill(signal.SIGCONT)
    paused_for = time.monotonic() - stopped

    def run_ends() -> list[str] | None:
        ends = [
            str(record.get("state"))
            for name, process in workers.items()
            for record in log_events(process, offsets[name])
            if record.get("task_id") == task_id and record.get("event") == "task_finished"
        ]
        return sorted(ends) if len(ends) == 2 else None

    # One run kept its effect; the other found the row finished and was ignored.
    assert wait_until(run_ends, 40, "both runs to end") == ["IGNORED", "SUCCESS"]
    row = ledger(database, task_id)
    assert row["state"] == "SUCCEEDED", row
    assert row["attempts"] == "2", row
    assert effects(database, task_id) == 1
    assert redispatches(other, task_id) == ["worker_lost"]
    assert paused_for > DEAD_AFTER, paused_for
    chaos_results.record(
        "R46 worker paused past its deadline", paused_seconds=round(paused_for, 2), effects=1
    )


def test_a_long_task_on_a_live_worker_is_never_sent_again(
    stack: Stack, api: ApiClient, database: Database, chaos_results: ChaosResults
) -> None:
    """60 s of work, twelve times WORKER_DEAD_AFTER=5: the heartbeat vouches for it."""
    module_worker = stack.worker("default")
    with module_worker.supervision_paused():
        restarts = module_worker.restarts
        module_worker.kill(signal.SIGTERM, group=False)
        module_worker.wait_for_exit(30)
        fast = [
            stack.start_extra("worker", "default", env=FAST_LIVENESS, restart=False)
            for _ in range(2)
        ]
        try:
            task_id = api.submit_ok("demo.record_effect", {"key": "liveness-long", "seconds": 60})
            row = wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=120)
            assert row["attempts"] == "1", row
            assert row["dispatches"] == "1", row
            assert effects(database, task_id) == 1
            for process in fast:
                assert redispatches(process, task_id) == []
                assert not [r for r in log_events(process) if r.get("event") == "task_held"]
        finally:
            for process in fast:
                process.stop()
    module_worker.wait_for_restart(restarts, 60)
    stack.wait_worker_ready("worker-default")
    chaos_results.record("R46 long task, live worker", task_seconds=60, dead_after=5, runs=1)
