"""Time limits on prefork and gevent, child recycling, and a gevent pool's concurrency
(R16, R18, R19).

TASK_SOFT_TIME_LIMIT=2 and TASK_TIME_LIMIT=4; the `default` worker is prefork with one
slot and recycles its child every 2 tasks; the `low` worker runs the project's gevent
pool (WORKER_LOW_POOL, gevent unless overridden).
"""

from __future__ import annotations

import itertools
import re
import time

import pytest

from tests.chaos.conftest import ChaosResults
from tests.harness.api import ApiClient
from tests.harness.databases import Database
from tests.harness.probes import ledger_rows, parse_time, wait_ledger, wait_until
from tests.harness.processes import SupervisedProcess
from tests.harness.stack import Stack, StackOptions

SOFT_LIMIT, HARD_LIMIT = 2, 4
TASKS_PER_CHILD = 2
SETTINGS = {
    "TASK_SOFT_TIME_LIMIT": str(SOFT_LIMIT),
    "TASK_TIME_LIMIT": str(HARD_LIMIT),
    "WORKER_MAX_TASKS_PER_CHILD": str(TASKS_PER_CHILD),
    "WORKER_DEFAULT_CONCURRENCY": "1",
}


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    return StackOptions(env=dict(SETTINGS), groups=("default", "low"), beat=False)


def low_pool(stack: Stack) -> str:
    match = re.search(r"concurrency: (\d+) \((\w+)\)", stack.worker("low").log_text())
    assert match, "no concurrency line in the low worker's banner"
    return match.group(2)


def settled_children(worker: SupervisedProcess, count: int = 1) -> list[int]:
    """The pool processes once `count` of them stay the same for a moment."""

    def stable() -> list[int] | None:
        first = sorted(worker.children())
        time.sleep(0.8)
        second = sorted(worker.children())
        return first if first == second and len(first) == count else None

    return wait_until(stable, 20, f"{worker.name}: pool never settled at {count} process")


def child_changes(api: ApiClient, worker: SupervisedProcess, tasks: int, **options: str) -> int:
    """Run `tasks` tasks one after the other; count how often the pool process changed."""
    seen = [settled_children(worker)]
    for n in range(tasks):
        task_id = api.submit_ok("demo.echo", {"message": f"r18-{n}"}, **options)
        api.wait_for_state(task_id, "SUCCESS", timeout=30)
        seen.append(settled_children(worker))
    return sum(1 for before, after in itertools.pairwise(seen) if before != after)


@pytest.mark.reliability("R18")
def test_a_child_is_replaced_after_max_tasks_per_child(stack: Stack, api: ApiClient) -> None:
    """Six tasks through one pool slot with WORKER_MAX_TASKS_PER_CHILD=2: three new
    children (never after every task, never three tasks in one child)."""
    changes = child_changes(api, stack.worker("default"), tasks=6)
    assert changes == 6 // TASKS_PER_CHILD, changes


@pytest.mark.reliability("R18")
def test_a_child_over_max_memory_per_child_is_replaced(stack: Stack, api: ApiClient) -> None:
    """A `high` worker whose limit (20 MB) is below a child's resident size (~60 MB)
    replaces its child after every task; max_tasks_per_child is out of the way there."""
    worker = stack.start_extra(
        "worker",
        "high",
        env={
            "WORKER_MAX_MEMORY_PER_CHILD_KIB": "20000",
            "WORKER_MAX_TASKS_PER_CHILD": "1000",
            "WORKER_HIGH_CONCURRENCY": "1",
        },
        restart=False,
    )
    try:
        changes = child_changes(api, worker, tasks=3, queue="high")
        assert changes == 3, changes
    finally:
        worker.stop()


@pytest.mark.reliability("R16")
def test_the_soft_limit_stops_a_prefork_task(api: ApiClient, database: Database) -> None:
    """A 6 s sleep on prefork: SoftTimeLimitExceeded is raised inside it after 2 s (the
    task does not catch it), so it fails then, with no retry."""
    task_id = api.submit_ok("demo.sleep", {"seconds": 6})
    body = api.wait_for_state(task_id, "FAILURE", timeout=20)
    assert body["error"]["type"] == "SoftTimeLimitExceeded", body
    row = wait_ledger(database, task_id, {"FAILED"}, timeout=10)
    started, finished = parse_time(row["started_at"]), parse_time(row["finished_at"])
    assert started is not None
    assert finished is not None
    ran = (finished - started).total_seconds()
    assert SOFT_LIMIT - 0.5 <= ran < HARD_LIMIT, ran
    assert row["attempts"] == "1", row


@pytest.mark.reliability("R16", "R19")
def test_on_gevent_only_the_hard_limit_stops_a_cooperative_sleep(
    stack: Stack, api: ApiClient, database: Database, chaos_results: ChaosResults
) -> None:
    """The same 6 s sleep on the gevent pool (queue=low): no soft limit fires there (no
    signals in greenlets); the hard limit, a gevent.Timeout, interrupts the cooperative
    sleep after 4 s: TimeLimitExceeded. A CPU-bound loop would not be interrupted."""
    if low_pool(stack) != "gevent":
        pytest.skip(f"the low worker group runs {low_pool(stack)}, not gevent")
    low = stack.worker("low")
    offset = low.log_size()
    task_id = api.submit_ok("demo.sleep", {"seconds": 6}, queue="low")
    body = api.wait_for_state(task_id, "FAILURE", timeout=20)
    assert body["error"]["type"] == "TimeLimitExceeded", body
    row = wait_ledger(database, task_id, {"FAILED", "DEAD"}, timeout=10)
    started, finished = parse_time(row["started_at"]), parse_time(row["finished_at"])
    assert started is not None
    assert finished is not None
    ran = (finished - started).total_seconds()
    assert HARD_LIMIT - 0.5 <= ran < 6, ran
    log = low.log_text(offset)
    assert "Soft time limit" not in log
    assert "Hard time limit" in log
    chaos_results.record("R16 gevent hard limit", ran_seconds=round(ran, 2), ledger=row["state"])


@pytest.mark.reliability("R19")
def test_a_gevent_worker_runs_many_io_tasks_at_once(
    stack: Stack, api: ApiClient, database: Database, chaos_results: ChaosResults
) -> None:
    """Ten 2 s sleeps on the gevent `low` worker overlap: all start before any ends and
    the batch takes about 2 s, not 20 s. The default group stays prefork."""
    assert re.search(r"concurrency: 1 \(prefork\)", stack.worker("default").log_text())
    if low_pool(stack) != "gevent":
        pytest.skip(f"the low worker group runs {low_pool(stack)}, not gevent")
    count, seconds = 10, 2.0
    task_ids = [
        api.submit_ok("demo.sleep", {"seconds": seconds}, queue="low") for _ in range(count)
    ]
    for task_id in task_ids:
        api.wait_for_state(task_id, "SUCCESS", timeout=30)
    rows = ledger_rows(database, task_ids)
    starts = [parse_time(row["started_at"]) for row in rows.values()]
    ends = [parse_time(row["finished_at"]) for row in rows.values()]
    assert all(stamp is not None for stamp in starts + ends), rows
    first_start = min(s for s in starts if s is not None)
    last_start = max(s for s in starts if s is not None)
    first_end = min(e for e in ends if e is not None)
    last_end = max(e for e in ends if e is not None)
    assert last_start < first_end, "every task started before the first one finished"
    wall = (last_end - first_start).total_seconds()
    assert wall < 2 * seconds, wall
    chaos_results.record("R19 gevent concurrency", tasks=count, wall_seconds=round(wall, 2))
