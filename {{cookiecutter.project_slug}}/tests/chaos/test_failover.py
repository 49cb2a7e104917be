"""The headline: the Redis master dies (again and again) under a stream of submissions, and
nothing the API accepted is lost or done twice (R17, R31, with R21, R33, R34 behind it).

A producer thread POSTs `demo.record_effect` through the API without pause while the
master is SIGKILLed; the sentinels promote the replica, the old master comes back as a
replica, next round. Workers are supervised like containers (restart: always), but none
may need it: every scenario here asserts 0 worker restarts and 0 watchdog exits (kombu
5.7 exited on a failover, "'NoneType' object has no attribute 'hostname'", and a worker
blocked in its pub/sub read was exited by its watchdog: broker.py). The ledger's reconcile
job runs every 2 s and re-publishes rows stuck PUBLISHED for 10 s (a message acknowledged
by the old master but never replicated).

Also here: a sentinel down (2 of 3 still reach the quorum), and a paused master that
accepts connections but answers nothing (the API must answer anyway).
"""

from __future__ import annotations

import re
import signal
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis as redis_py

from tests.chaos.conftest import ChaosResults
from tests.harness.api import ApiClient
from tests.harness.databases import Database
from tests.harness.load import Producer
from tests.harness.probes import (
    effect_counts,
    ledger_rows,
    parse_time,
    sentinel_cluster,
    wait_ledger,
    wait_until,
)
from tests.harness.redis import Address, RedisSentinelCluster, SentinelNode
from tests.harness.stack import TEST_SETTINGS, Stack, StackOptions

API_TIMEOUT = int(TEST_SETTINGS["API_TIMEOUT"])
SETTINGS = {
    "RECONCILE_INTERVAL": "2",
    "RECONCILE_QUEUED_AFTER": "3",
    "RECONCILE_PUBLISHED_AFTER": "10",
    "BEAT_RELOAD_INTERVAL": "1",
    "BEAT_LEASE_SECONDS": "10",
    # A paused master leaves a worker's broadcast read waiting until the master answers or
    # is demoted (about 20 s here), and the next scenario starts at once: with the tier's
    # 30 s the silences of two scenarios add up to an exit. A worker hung for good still
    # fails the scenario, whose waits for a task are shorter (production: 120 s).
    "WORKER_WATCHDOG_TIMEOUT": "60",
}
KOMBU_CRASH = "'NoneType' object has no attribute 'hostname'"
WATCHDOG_EXIT = "worker stopped answering its own ping"  # observability/watchdog.py
GOSSIP_ERROR = "Error on restarting Gossip"
# Promotion to the first task finished: the consumer reconnects on kombu's fixed schedule
# (2 s, then 4 s later) and mingles for 1 s, so ~4.3 s when the sentinels switch in ~2.8 s,
# 5.1 s at worst just after a retry; a worker that hangs takes the watchdog's 30 s and more.
FLOWING_AFTER_PROMOTION_BUDGET = 6.0
PAUSE_MS = 10_000
# API_READINESS_TIMEOUT (2 s) plus one socket timeout (REDIS_SOCKET_TIMEOUT, 5 s) and slack.
READINESS_BUDGET = 2 + 5 + 3


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    # `high` runs the reconcile job (routed by the ledger.* glob).
    return StackOptions(env=dict(SETTINGS), groups=("high", "default"))


@pytest.fixture(scope="module")
def cluster(stack: Stack) -> RedisSentinelCluster:
    return sentinel_cluster(stack)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def worker_log_count(stack: Stack, text: str) -> int:
    return sum(stack.processes[name].log_text().count(text) for name in stack.worker_names)


def kombu_crashes(stack: Stack) -> int:
    return worker_log_count(stack, KOMBU_CRASH)


class WorkerSurvival:
    """Worker restarts, watchdog exits and Gossip errors from now on (all must stay 0)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.restarts = stack.restarts()
        self.exits = worker_log_count(stack, WATCHDOG_EXIT)
        self.gossip_errors = worker_log_count(stack, GOSSIP_ERROR)

    def numbers(self) -> dict[str, Any]:
        now = self.stack.restarts()
        return {
            "worker_restarts": {
                name: now[name] - self.restarts.get(name, 0)
                for name in now
                if name.startswith("worker-")
            },
            "watchdog_exits": worker_log_count(self.stack, WATCHDOG_EXIT) - self.exits,
            "gossip_errors": worker_log_count(self.stack, GOSSIP_ERROR) - self.gossip_errors,
        }

    def check(self, numbers: dict[str, Any]) -> None:
        logs = {name: str(self.stack.processes[name].log_path) for name in self.stack.worker_names}
        assert numbers["watchdog_exits"] == 0, f"a worker stopped answering; logs: {logs}"
        assert not any(numbers["worker_restarts"].values()), (numbers, logs)
        assert numbers["gossip_errors"] == 0, f"see {GOSSIP_ERROR!r} in {logs}"


def wait_first_success_after(
    database: Database, producer: Producer, after: float, timeout: float = 90
) -> datetime:
    """Finish time (ledger, UTC) of the first task submitted after `after` that succeeded."""

    def first_finish() -> datetime | None:
        ids = [s.task_id for s in producer.accepted(after) if s.task_id][:40]
        if not ids:
            return None
        rows = ledger_rows(database, ids)
        finished = [
            parse_time(row["finished_at"]) for row in rows.values() if row["state"] == "SUCCEEDED"
        ]
        return min((f for f in finished if f is not None), default=None)

    return wait_until(first_finish, timeout, "no task submitted after the kill succeeded", 0.25)


def settle(
    database: Database, task_ids: list[str], timeout: float
) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """Wait until every task is SUCCEEDED (or the timeout); returns rows and effect counts."""
    deadline = time.monotonic() + timeout
    while True:
        rows = ledger_rows(database, task_ids)
        done = all(rows.get(t, {}).get("state") == "SUCCEEDED" for t in task_ids)
        if done or time.monotonic() > deadline:
            return rows, effect_counts(database, task_ids)
        time.sleep(1)


def run_failovers(
    stack: Stack,
    cluster: RedisSentinelCluster,
    database: Database,
    rounds: int,
    chaos_results: ChaosResults,
    scenario: str,
) -> None:
    survival = WorkerSurvival(stack)
    crashes_before = kombu_crashes(stack)
    producer = Producer(stack, prefix=scenario.replace(" ", "-"))
    producer.start()
    switch_seconds: list[float] = []
    recovery_seconds: list[float] = []
    flowing_seconds: list[float] = []  # promotion (as the test saw it) to the first success
    try:
        for _ in range(rounds):
            cluster.wait_healthy(timeout=60)
            wait_until(lambda: len(producer.accepted(time.monotonic() - 2)) >= 3, 30, "no load")
            killed_wall, killed = utcnow(), time.monotonic()
            old = cluster.kill_master()
            cluster.wait_for_failover(old, timeout=30)
            switch_seconds.append(round(time.monotonic() - killed, 2))
            first = wait_first_success_after(database, producer, killed)
            recovery_seconds.append(round((first - killed_wall).total_seconds(), 2))
            flowing_seconds.append(round(recovery_seconds[-1] - switch_seconds[-1], 2))
            cluster.restart_node(old)
        cluster.wait_healthy(timeout=60)
        # Some traffic on the final topology too.
        after_last = time.monotonic()
        wait_until(lambda: len(producer.accepted(after_last)) >= 5, 60, "producer stalled")
    finally:
        producer.stop()

    submissions = list(producer.submissions)
    accepted = [s.task_id for s in submissions if s.task_id is not None]
    refused = [s for s in submissions if s.status is not None and s.status != 202]
    failed = [s for s in submissions if s.status is None]
    rows, counts = settle(database, accepted, timeout=120)
    lost = [t for t in accepted if rows.get(t, {}).get("state") != "SUCCEEDED"]
    duplicated = [t for t in accepted if counts[t] > 1]
    missing_effect = [t for t in accepted if counts[t] == 0]
    survived = survival.numbers()
    numbers: dict[str, Any] = {
        "failovers": rounds,
        "submitted": len(submissions),
        "accepted": len(accepted),
        "accepted_as_queued": sum(1 for s in submissions if s.state == "QUEUED"),
        "redispatched_by_reconcile": sum(
            1 for t in accepted if int(rows.get(t, {}).get("dispatches") or 0) > 1
        ),
        "refused_503": sum(1 for s in refused if s.status == 503),
        "transport_errors": len(failed),
        "succeeded": len(accepted) - len(lost),
        "lost": len(lost),
        "duplicated": len(duplicated),
        **survived,
        "kombu_hostname_crashes": kombu_crashes(stack) - crashes_before,
        "sentinel_switch_seconds": switch_seconds,
        "kill_to_first_success_seconds": recovery_seconds,
        "promotion_to_first_success_seconds": flowing_seconds,
        "slowest_submit_seconds": round(max(s.answered - s.sent for s in submissions), 2),
    }
    chaos_results.record(scenario, **numbers)

    assert not lost, f"accepted but not SUCCEEDED: {[(t, rows.get(t)) for t in lost[:10]]}"
    assert not duplicated, f"side effect repeated: {duplicated[:10]}"
    assert not missing_effect, missing_effect[:10]
    assert not failed, [s.error for s in failed[:5]]
    # Anything refused says why (503 with a reason), never a 500 or a hang.
    assert all(s.status == 503 and s.error for s in refused), [
        (s.status, s.error) for s in refused[:5]
    ]
    assert len(refused) <= rounds, "at most one refusal per failover"
    assert max(s.answered - s.sent for s in submissions) < API_TIMEOUT
    assert len(recovery_seconds) == rounds
    assert all(seconds < 60 for seconds in recovery_seconds), recovery_seconds
    # Workers ride through every failover: no exit, no restart, no hung event loop.
    survival.check(survived)
    assert max(flowing_seconds) < FLOWING_AFTER_PROMOTION_BUDGET, flowing_seconds


@pytest.mark.reliability("R17", "R31", "R21", "R33", "R34")
@pytest.mark.parametrize(
    "rounds",
    [
        pytest.param(5, id="5-failovers"),
        pytest.param(15, id="15-failovers", marks=pytest.mark.slow),
    ],
)
def test_no_accepted_task_is_lost_or_repeated_across_master_failovers(
    stack: Stack,
    cluster: RedisSentinelCluster,
    database: Database,
    chaos_results: ChaosResults,
    rounds: int,
) -> None:
    run_failovers(stack, cluster, database, rounds, chaos_results, f"failover x{rounds}")


def settle_waking_hung_workers(
    stack: Stack, database: Database, task_ids: list[str], quiet: float = 30
) -> tuple[dict[str, dict[str, str]], dict[str, int], bool]:
    """Settle the tasks; if nothing finishes for `quiet` seconds, the workers hang in the
    known pub/sub read (see test_idle_workers_consume_again_after_a_failover): wake them
    with a broadcast, report that it was needed, and settle the rest."""
    rows, counts = settle(database, task_ids, timeout=quiet)
    if all(rows.get(t, {}).get("state") == "SUCCEEDED" for t in task_ids):
        return rows, counts, False
    stack.ping_workers()
    rows, counts = settle(database, task_ids, timeout=120)
    return rows, counts, True


def names_master(sentinel: SentinelNode, address: Address) -> bool:
    try:
        return sentinel.master_address() == address
    except (redis_py.RedisError, OSError, ValueError):
        return False


@pytest.mark.reliability("R31")
def test_two_of_three_sentinels_still_fail_over(
    stack: Stack,
    cluster: RedisSentinelCluster,
    database: Database,
    chaos_results: ChaosResults,
) -> None:
    """One sentinel SIGKILLed (and kept down) before the master: the other two still reach
    the quorum of 2 and promote the replica; the producer goes on publishing to the new
    master, and every accepted task runs exactly once."""
    cluster.wait_healthy(timeout=60)
    survival = WorkerSurvival(stack)
    sentinel = cluster.sentinels[0].process
    producer = Producer(stack, prefix="sentinel-down")
    old = None
    try:
        with sentinel.supervision_paused():
            sentinel.kill(signal.SIGKILL)
            sentinel.wait_for_exit(10)
            producer.start()
            wait_until(lambda: len(producer.accepted()) >= 3, 30, "no load before the kill")
            killed = time.monotonic()
            old = cluster.kill_master()
            try:
                new = cluster.wait_for_failover(old, timeout=40)
            except TimeoutError as exc:
                raise AssertionError(f"two sentinels did not fail over: {exc}") from exc
            switched = time.monotonic() - killed
            assert new != old
            wait_until(lambda: len(producer.accepted(killed + 1)) >= 5, 60, "producer stalled")
        # Leaving the block restarts the sentinel, whose config still names the old master
        # until the others update it (~0.3 s). Were the old master up by then (restarted,
        # it serves as a master until the sentinels demote it, ~10 s), a worker connecting
        # in that window would follow it: deaf to broadcasts and given no new task for
        # those 10 s (seen). Restarted together, that is another scenario; here the old
        # master comes back once every sentinel names the new one.
        wait_until(
            lambda: all(names_master(s, new) for s in cluster.sentinels),
            30,
            "the restarted sentinel to name the new master",
        )
        cluster.restart_node(old)
        old = None
    finally:
        producer.stop()
        if old is not None:
            cluster.restart_node(old)
    cluster.wait_healthy(timeout=60)
    accepted = [s.task_id for s in producer.accepted() if s.task_id]
    rows, counts = settle(database, accepted, timeout=90)
    succeeded = sum(1 for t in accepted if rows.get(t, {}).get("state") == "SUCCEEDED")
    survived = survival.numbers()
    chaos_results.record(
        "failover with a sentinel down",
        switch_seconds=round(switched, 2),
        accepted=len(accepted),
        succeeded=succeeded,
        duplicated=sum(1 for t in accepted if counts[t] > 1),
        **survived,
    )
    if succeeded < len(accepted):
        raise TimeoutError(f"{len(accepted) - succeeded} accepted tasks never ran: workers hung")
    assert all(counts[t] == 1 for t in accepted), counts
    # The dead sentinel slows the reconnect inside redis-py's pub/sub read until the new
    # master is known: the read that then blocked the workers for good (broker.py).
    survival.check(survived)


@pytest.mark.reliability("R17", "R31")
def test_a_paused_master_does_not_hang_the_api(
    stack: Stack,
    cluster: RedisSentinelCluster,
    api: ApiClient,
    database: Database,
    chaos_results: ChaosResults,
) -> None:
    """CLIENT PAUSE on the master under a stream of submissions: connections are
    accepted, no command is answered for 10 s (a stalled or half-open server). A
    submission still answers within API_TIMEOUT (202, or 503 with a reason), /readyz
    answers within its budget (503 with the reason, or 200 once the sentinels promoted the
    replica), and everything accepted runs once afterwards."""
    cluster.wait_healthy(timeout=60)
    survival = WorkerSurvival(stack)
    producer = Producer(stack, prefix="paused-master-stream", pace=0.2)
    producer.start()
    try:
        wait_until(lambda: len(producer.accepted()) >= 3, 30, "no load before the pause")
        with cluster.master().client(socket_timeout=2) as admin:
            assert admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        paused = time.monotonic()

        ready = api.get("/readyz")
        ready_seconds = time.monotonic() - paused
        submit_started = time.monotonic()
        response = api.submit("demo.record_effect", {"key": "paused-master"})
        submit_seconds = time.monotonic() - submit_started

        wait_until(lambda: time.monotonic() - paused > PAUSE_MS / 1000, 15, "pause not over")
        cluster.wait_healthy(timeout=60)
        stack.wait_api_ready(timeout=60)
        after = time.monotonic()
        wait_until(lambda: len(producer.accepted(after)) >= 3, 60, "producer stalled")
    finally:
        producer.stop()

    chaos_results.record(
        "paused master",
        readyz_status=ready.status_code,
        readyz_seconds=round(ready_seconds, 2),
        readyz_body=ready.json(),
        submit_status=response.status_code,
        submit_seconds=round(submit_seconds, 2),
        stream_slowest_submit_seconds=round(
            max(s.answered - s.sent for s in producer.submissions), 2
        ),
    )
    assert submit_seconds < API_TIMEOUT
    assert response.status_code in {202, 503}, response.text
    if response.status_code == 503:
        assert response.json().get("detail"), response.text
    # The probe answers within its budget: 503 with the reason while the paused master is
    # still the master, 200 if the sentinels already promoted the replica (~3 s).
    assert ready_seconds < READINESS_BUDGET, ready_seconds
    assert ready.status_code in {200, 503}, ready.text
    if ready.status_code == 503:
        reasons = [v for v in ready.json().values() if v != "ok"]
        assert reasons
        assert all(re.match(r"unreachable: \w+", reason) for reason in reasons), reasons
    accepted = [s.task_id for s in producer.accepted() if s.task_id]
    if response.status_code == 202:
        accepted.append(response.json()["id"])
    rows, counts, woken = settle_waking_hung_workers(stack, database, accepted)
    survived = survival.numbers()
    chaos_results.record("paused master", workers_hung_until_broadcast=woken, **survived)
    assert all(rows[t]["state"] == "SUCCEEDED" for t in accepted), rows
    assert all(counts[t] == 1 for t in accepted), counts
    assert all(s.status in {202, 503} for s in producer.submissions), producer.submissions
    survival.check(survived)


@pytest.mark.reliability("R31")
def test_idle_workers_consume_again_after_a_failover(
    stack: Stack,
    cluster: RedisSentinelCluster,
    api: ApiClient,
    database: Database,
    chaos_results: ChaosResults,
) -> None:
    """No traffic at all when the master dies. The workers must consume from the new
    master on their own, without a restart (their watchdog would exit a worker blocked in
    its pub/sub read). On failure, a `celery inspect ping` broadcast is sent afterwards to
    show whether it was that read."""
    cluster.wait_healthy(timeout=60)
    survival = WorkerSurvival(stack)
    time.sleep(3)  # idle: no task running or queued
    old = cluster.kill_master()
    cluster.wait_for_failover(old, timeout=30)
    cluster.restart_node(old)
    cluster.wait_healthy(timeout=60)
    task_id = api.submit_ok("demo.record_effect", {"key": "idle-failover"})
    try:
        wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=30)
    except TimeoutError:
        chaos_results.record("idle failover", workers_hung=True)
        stack.ping_workers()  # a broadcast on the pub/sub channel wakes the loop
        wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=60)
        chaos_results.record("idle failover", woken_by_broadcast=True)
        raise
    survived = survival.numbers()
    chaos_results.record("idle failover", workers_hung=False, **survived)
    survival.check(survived)
