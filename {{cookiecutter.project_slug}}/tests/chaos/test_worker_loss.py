"""Workers die mid-task: a prefork child, the whole worker, a warm and a cold shutdown, and a
busy worker next to an idle one (R01-R04, R20, R21, R46).

One `default` worker with one pool slot, no beat (so the ledger's reconcile job cannot
re-dispatch anything: every re-run seen here is Celery's and kombu's own redelivery, or
the worker liveness of a restarted worker).
"""

from __future__ import annotations

import re
import signal
import time
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
    queue_length,
    redis_client,
    restart_and_wait,
    wait_ledger,
    wait_until,
)
from tests.harness.stack import TEST_SETTINGS, Stack, StackOptions

VISIBILITY_TIMEOUT = int(TEST_SETTINGS["VISIBILITY_TIMEOUT"])
SWEEP_INTERVAL = int(TEST_SETTINGS["UNACKED_RESTORE_INTERVAL"])
# Long enough for a task that outlives a worker restart; VT must stay above the hard limit.
SETTINGS = {
    "WORKER_DEFAULT_CONCURRENCY": "1",
    "TASK_SOFT_TIME_LIMIT": "12",
    "TASK_TIME_LIMIT": "14",
}


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    return StackOptions(env=dict(SETTINGS), groups=("default",), beat=False)


def in_unacked(stack: Stack, task_id: str) -> bool:
    """Whether the task's message sits in kombu's `unacked` hash (delivered, not acked)."""
    values = redis_client(stack).hvals("unacked")
    return any(task_id.encode() in value for value in values)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@pytest.mark.reliability("R02", "R21")
def test_a_killed_prefork_child_is_requeued_at_once_and_runs_once(
    stack: Stack, api: ApiClient, database: Database, chaos_results: ChaosResults
) -> None:
    """R02: with task_reject_on_worker_lost the message of a child killed mid-task is
    requeued immediately (well inside the visibility timeout); without it the task would
    end FAILURE (WorkerLostError) and never run again."""
    worker = stack.worker("default")
    offset = worker.log_size()
    task_id = api.submit_ok("demo.record_effect", {"key": "r02-child-killed", "seconds": 3})
    wait_ledger(database, task_id, {"STARTED"}, timeout=30)

    killed_at = time.monotonic()
    child = worker.kill_child(signal.SIGKILL)
    row = wait_ledger(database, task_id, {"SUCCEEDED", "FAILED", "DEAD"}, timeout=40)
    rerun_seconds = time.monotonic() - killed_at

    assert row["state"] == "SUCCEEDED", row
    assert row["attempts"] == "2", row
    assert effects(database, task_id) == 1
    assert child not in worker.children()
    assert "WorkerLostError" in worker.log_text(offset)
    # Requeued by the reject, not restored by the visibility-timeout sweep.
    assert rerun_seconds < VISIBILITY_TIMEOUT - 5, rerun_seconds
    assert api.status(task_id).json()["celery_state"] == "SUCCESS"
    chaos_results.record("R02 child killed", rerun_and_finish_seconds=round(rerun_seconds, 2))


@pytest.mark.reliability("R20")
def test_sigterm_lets_the_running_task_finish_and_exits_zero(
    stack: Stack, api: ApiClient, database: Database
) -> None:
    worker = stack.worker("default")
    task_id = api.submit_ok("demo.record_effect", {"key": "r20-warm", "seconds": 4})
    wait_ledger(database, task_id, {"STARTED"}, timeout=30)

    with worker.supervision_paused():
        restarts = worker.restarts
        sent_at = utcnow()
        worker.kill(signal.SIGTERM, group=False)
        exit_code = worker.wait_for_exit(30)
        row = ledger(database, task_id)
        assert exit_code == 0, worker.log_tail()
        # The task finished before the worker left, after the signal arrived.
        assert row["state"] == "SUCCEEDED", row
        finished = parse_time(row["finished_at"])
        assert finished is not None
        assert finished > sent_at
        assert effects(database, task_id) == 1
    restart_and_wait(stack, "worker-default", restarts)
    assert api.status(task_id).json()["celery_state"] == "SUCCESS"


@pytest.mark.reliability("R20", "R21")
def test_cold_shutdown_restores_the_running_task_at_once(
    stack: Stack, api: ApiClient, database: Database, chaos_results: ChaosResults
) -> None:
    """SIGQUIT: after WORKER_SOFT_SHUTDOWN_TIMEOUT the running task is cancelled and its
    message restored to the queue at once ("Restoring N unacknowledged message(s)"); the
    restarted worker runs it well before the visibility timeout would have."""
    worker = stack.worker("default")
    client = redis_client(stack)
    task_id = api.submit_ok("demo.record_effect", {"key": "r20-cold", "seconds": 8})
    wait_ledger(database, task_id, {"STARTED"}, timeout=30)

    with worker.supervision_paused():
        restarts = worker.restarts
        offset = worker.log_size()
        sent = time.monotonic()
        worker.kill(signal.SIGQUIT, group=False)
        worker.wait_for_exit(30)
        log = worker.log_text(offset)
        assert re.search(r"Restoring \d+ unacknowledged message\(s\)", log), worker.log_tail()
        assert queue_length(client, "default") >= 1
        assert not in_unacked(stack, task_id)
        assert effects(database, task_id) == 0
    restart_and_wait(stack, "worker-default", restarts)
    row = wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=40)
    rerun_seconds = time.monotonic() - sent

    assert effects(database, task_id) == 1
    assert int(row["attempts"]) >= 2, row
    assert rerun_seconds < VISIBILITY_TIMEOUT + 10 + 8, rerun_seconds
    chaos_results.record("R20 cold shutdown", restore_and_finish_seconds=round(rerun_seconds, 2))


@pytest.mark.reliability("R03")
def test_a_busy_worker_does_not_hoard_the_next_message(
    stack: Stack, api: ApiClient, database: Database
) -> None:
    """Prefetch multiplier 1 with one slot: while the only worker is busy the next message
    stays in Redis (a multiplier of 4 would reserve it in the busy worker), so a second
    worker started afterwards takes it at once instead of it waiting behind the first."""
    client = redis_client(stack)
    busy = api.submit_ok("demo.sleep", {"seconds": 11})
    wait_ledger(database, busy, {"STARTED"}, timeout=30)
    waiting = api.submit_ok("demo.record_effect", {"key": "r03-next"})
    time.sleep(1.5)  # a hoarding worker would have fetched it by now
    assert queue_length(client, "default") == 1
    assert ledger(database, waiting)["state"] == "PUBLISHED"

    second = stack.start_extra("worker", "default", restart=False)
    try:
        wait_ledger(database, waiting, {"SUCCEEDED"}, timeout=30)
        assert ledger(database, busy)["state"] == "STARTED", "ran after the busy task"
        second.wait_for_log(waiting, timeout=5, since=0)
        assert waiting not in stack.worker("default").log_text()
        wait_ledger(database, busy, {"SUCCEEDED"}, timeout=30)
    finally:
        second.stop()


@pytest.mark.reliability("R01", "R04", "R21", "R46")
def test_a_killed_worker_task_runs_again_at_its_restart_and_the_late_copy_is_dropped(
    stack: Stack, api: ApiClient, database: Database, chaos_results: ChaosResults
) -> None:
    """The whole worker is SIGKILLed mid-task; nothing can requeue the message then.

    R01 (task_acks_late): while the task runs its message is in kombu's `unacked` hash,
    and it leaves that hash only after the task finished. With early acks the message
    would be acked when the task started: absent from `unacked` during the run, and lost
    with the worker. No setting switches acks_late off per call, so the hash is the
    direct evidence.

    R46: the supervisor restarts the worker under the same node name. The new process
    proves the old one dead, so at its start it sends the task again (cause
    `worker_restarted`), long before any timeout.

    R04: kombu still restores the original message once it is older than
    VISIBILITY_TIMEOUT (20 s here) at the next sweep (UNACKED_RESTORE_INTERVAL). That
    late copy of a finished task is dropped before it runs (R21): one effect.
    """
    worker = stack.worker("default")
    client = redis_client(stack)
    task_id = api.submit_ok("demo.record_effect", {"key": "r04-worker-killed", "seconds": 8})
    first = wait_ledger(database, task_id, {"STARTED"}, timeout=30)
    first_start = parse_time(first["started_at"])
    assert first_start is not None
    assert in_unacked(stack, task_id), "acks_late: the running task's message is unacked"

    with worker.supervision_paused():
        restarts = worker.restarts
        worker.kill(signal.SIGKILL)  # the whole process group: main process and pool
        killed = time.monotonic()
        worker.wait_for_exit(10)
        time.sleep(1)
        assert in_unacked(stack, task_id)
        assert queue_length(client, "default") == 0
    restart_and_wait(stack, "worker-default", restarts)
    restarted_after = time.monotonic() - killed

    row = wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=30)
    second_start = parse_time(row["started_at"])
    assert second_start is not None
    rerun_after = (second_start - first_start).total_seconds()
    assert row["attempts"] == "2", row
    assert effects(database, task_id) == 1
    causes = [
        record["cause"]
        for record in log_events(worker)
        if record.get("event") == "reconcile_redispatch" and record.get("task_id") == task_id
    ]
    assert causes == ["worker_restarted"]
    assert rerun_after < VISIBILITY_TIMEOUT - 1, rerun_after

    # The original message comes back after the visibility timeout, and is dropped.
    worker.wait_for_log(
        rf'"event": "task_deduplicated", "task_id": "{task_id}"',
        timeout=VISIBILITY_TIMEOUT + 3 * SWEEP_INTERVAL + 10,
    )
    restored_after = (utcnow() - first_start).total_seconds()
    assert restored_after >= VISIBILITY_TIMEOUT - 1, restored_after
    wait_until(lambda: not in_unacked(stack, task_id), 10, "acked after the copy was dropped")
    assert effects(database, task_id) == 1
    assert ledger(database, task_id)["attempts"] == "2"
    chaos_results.record(
        "R04/R46 worker killed and restarted",
        visibility_timeout=VISIBILITY_TIMEOUT,
        sweep_interval=SWEEP_INTERVAL,
        worker_back_after_seconds=round(restarted_after, 2),
        rerun_after_first_start_seconds=round(rerun_after, 2),
        late_copy_restored_after_first_start_seconds=round(restored_after, 2),
    )
