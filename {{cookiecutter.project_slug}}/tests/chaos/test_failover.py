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

import pytest
import redis as redis_py

from tests.chaos.conftest import ChaosResults
from tests.harness.api import ApiClient
from tests.harness.databases import Database
from tests.harness.failover import (
    FAILOVER_SETTINGS,
    WorkerSurvival,
    run_failovers,
    settle,
)
from tests.harness.load import Producer
from tests.harness.probes import (
    sentinel_cluster,
    wait_ledger,
    wait_until,
)
from tests.harness.redis import Address, RedisSentinelCluster, SentinelNode
from tests.harness.stack import TEST_SETTINGS, Stack, StackOptions

API_TIMEOUT = int(TEST_SETTINGS["API_TIMEOUT"])
PAUSE_MS = 10_000
# API_READINESS_TIMEOUT (2 s) plus one socket timeout (REDIS_SOCKET_TIMEOUT, 5 s) and slack.
READINESS_BUDGET = 2 + 5 + 3


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    # `high` runs the reconcile job (routed by the ledger.* glob).
    return StackOptions(env=dict(FAILOVER_SETTINGS), groups=("high", "default"))


@pytest.fixture(scope="module")
def cluster(stack: Stack) -> RedisSentinelCluster:
    return sentinel_cluster(stack)


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
    run_failovers(stack, cluster, database, rounds, chaos_results.record, f"failover x{rounds}")


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
