"""Master failovers under a stream of submissions, and what they cost (chaos and TLS tiers).

`run_failovers` kills the Redis master `rounds` times while a producer POSTs
`demo.record_effect` through the API, and asserts the headline: every accepted task ends
SUCCEEDED with its effect written once, the workers ride through (no restart, no watchdog
exit, no Gossip error), and tasks flow again within a bound after each promotion.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.harness.databases import Database
from tests.harness.load import API_TIMEOUT, Producer
from tests.harness.probes import effect_counts, ledger_rows, parse_time, wait_until
from tests.harness.redis import RedisSentinelCluster
from tests.harness.stack import Stack

#: Where a scenario's figures go: `record(scenario, **numbers)` (the chaos tier's results).
Record = Callable[..., None]

#: The stack's settings for these scenarios: reconcile re-sends what a failover dropped.
FAILOVER_SETTINGS = {
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
# (2 s, then 4 s later) and mingles for 1 s, so ~4.3 s when the sentinels switch in ~2.8 s;
# over TLS, with MariaDB, 1.8-5.2 s in four runs on 2 cores. The bound tells a consumer
# that reconnected on schedule from one that hung, which takes the watchdog's timeout
# (60 s here) and more: generous, yet far below that.
FLOWING_AFTER_PROMOTION_BUDGET = 15.0


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

    def settled() -> dict[str, dict[str, str]] | None:
        rows = ledger_rows(database, task_ids)
        done = all(rows.get(t, {}).get("state") == "SUCCEEDED" for t in task_ids)
        return rows if done else None

    try:
        rows = wait_until(settled, timeout, "every task SUCCEEDED", step=1)
    except TimeoutError:
        rows = ledger_rows(database, task_ids)  # the callers report what is missing
    return rows, effect_counts(database, task_ids)


def run_failovers(
    stack: Stack,
    cluster: RedisSentinelCluster,
    database: Database,
    rounds: int,
    record: Record,
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
    record(scenario, **numbers)

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
