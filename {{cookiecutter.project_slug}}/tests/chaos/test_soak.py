"""A soak under mixed faults: `make soak` (SOAK_SECONDS, default 600; SOAK_SEED to replay).

Two producers keep a steady stream through the API: short `demo.record_effect` tasks, and
ones that sleep 1-20 s first. At random intervals one fault is injected, the kinds taken
in shuffled rounds so each comes up: a prefork child SIGKILLed, the whole worker
SIGKILLed (its supervisor restarts it), the Redis master SIGKILLed (the sentinels promote
the replica, the old master comes back as a replica), a sentinel restarted, the database
restarted, and the worker SIGSTOPped for longer than WORKER_DEAD_AFTER, then resumed.

Then the producers stop and every accepted task must finish. The table, like Jepsen's:
accepted, succeeded, lost (accepted, never finished), effects duplicated (a task whose
effect row was written twice), refused (the API said no: the client knows); and per
fault kind the time from the injection to the affected tasks running again: the tasks
the hit worker was running (their first start after it; for a killed child, its task's),
or, for faults of shared services, the first task submitted after the injection (its
finish). Written to
tests/chaos/results/soak.json. The bar: 0 lost, 0 duplicated.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.harness.databases import Database
from tests.harness.load import Producer
from tests.harness.probes import (
    effect_counts,
    ledger_rows,
    log_events,
    parse_time,
    sentinel_cluster,
    wait_until,
)
from tests.harness.redis import RedisSentinelCluster
from tests.harness.stack import Stack, StackOptions

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
SEED = int(os.environ.get("SOAK_SEED", str(random.SystemRandom().randrange(1_000_000))))
RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
DEAD_AFTER = 6.0
SETTINGS = {
    # Long enough for the 1-20 s tasks; the production visibility timeout.
    "TASK_SOFT_TIME_LIMIT": "30",
    "TASK_TIME_LIMIT": "35",
    "VISIBILITY_TIMEOUT": "1800",
    "WORKER_DEFAULT_CONCURRENCY": "8",
    "WORKER_HEARTBEAT_INTERVAL": "2",
    "WORKER_DEAD_AFTER": str(int(DEAD_AFTER)),
    # Reconcile: what a failover drops (a publish acknowledged by a dying master).
    "RECONCILE_INTERVAL": "3",
    "RECONCILE_QUEUED_AFTER": "5",
    "RECONCILE_PUBLISHED_AFTER": "45",
    "BEAT_RELOAD_INTERVAL": "1",
    "BEAT_LEASE_SECONDS": "10",
}
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"  # the JSON logs' timestamps (UTC on these machines)
ROW_COLUMNS = ("state", "attempts", "dispatches", "worker", "started_at", "finished_at")
# Time for the last tasks, re-dispatches included, once the producers stop.
DRAIN_SECONDS = 240

# The run, the drain and the stack's start: past the suite's 300 s per test for any soak.
TEST_TIMEOUT = SOAK_SECONDS + DRAIN_SECONDS + 180

pytestmark = [
    pytest.mark.soak,
    pytest.mark.timeout(TEST_TIMEOUT),
    pytest.mark.reliability("R21", "R31", "R34", "R46"),
]


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    # `high` runs the reconcile job; every fault of a worker hits `default`.
    return StackOptions(env=dict(SETTINGS), groups=("high", "default"))


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class Fault:
    kind: str
    at: float  # monotonic
    injected: datetime  # UTC, this machine's clock (the harness database's too)
    # Tasks the hit worker was running, for the kinds that hit a worker.
    affected: list[str] = field(default_factory=list)
    recovery_seconds: float | None = None


class Injector:
    """Each fault kind: inject it, heal what a supervisor would, return once done."""

    def __init__(self, stack: Stack, cluster: RedisSentinelCluster, database: Database) -> None:
        self.stack = stack
        self.cluster = cluster
        self.database = database
        self.worker = stack.worker("default")
        self.kinds: dict[str, Callable[[], None]] = {
            "child_kill": self.kill_child,
            "worker_kill": self.kill_worker,
            "worker_pause": self.pause_worker,
            "redis_master_kill": self.kill_master,
            "sentinel_restart": self.restart_sentinel,
            "database_restart": self.restart_database,
        }
        self.hits_worker = {"child_kill", "worker_kill", "worker_pause"}

    def running_on_worker(self) -> list[str]:
        node = self.stack.worker_nodename("default")
        rows = self.database.query(
            f"SELECT id FROM task_ledger WHERE state = 'STARTED' AND worker = '{node}'"
        )
        return [row[0] for row in rows]

    def inject(self, kind: str) -> Fault:
        affected = self.running_on_worker() if kind in self.hits_worker else []
        fault = Fault(kind, time.monotonic(), utcnow(), affected)
        self.kinds[kind]()
        return fault

    def kill_child(self) -> None:
        self.worker.kill_child(signal.SIGKILL)

    def kill_worker(self) -> None:
        restarts = self.worker.restarts
        self.worker.kill(signal.SIGKILL)
        self.worker.wait_for_restart(restarts, 60)
        self.stack.wait_worker_ready("worker-default")

    def pause_worker(self) -> None:
        self.worker.kill(signal.SIGSTOP)
        try:
            time.sleep(DEAD_AFTER + 3)
        finally:
            self.worker.kill(signal.SIGCONT)

    def kill_master(self) -> None:
        old = self.cluster.kill_master()
        try:
            self.cluster.wait_for_failover(old, timeout=60)
        finally:
            self.cluster.restart_node(old)

    def restart_sentinel(self) -> None:
        sentinel = random.choice(self.cluster.sentinels).process
        restarts = sentinel.restarts
        sentinel.kill(signal.SIGKILL)
        sentinel.wait_for_restart(restarts, 30)

    def restart_database(self) -> None:
        (server,) = self.database.processes()
        server.kill(signal.SIGINT, group=False)  # PostgreSQL's fast shutdown
        server.wait_for_exit(30)
        server.respawn()
        wait_until(self._database_answers, 60, "the database back after its restart")

    def _database_answers(self) -> bool:
        try:
            return bool(self.database.query("SELECT 1"))
        except Exception:  # any failure means "not yet"
            return False


def starts_by_task(stack: Stack) -> dict[str, list[datetime]]:
    """Every start of every task, from the workers' logs (the ledger keeps the last one)."""
    starts: dict[str, list[datetime]] = defaultdict(list)
    for name in stack.worker_names:
        for record in log_events(stack.processes[name]):
            if record.get("event") == "task_started" and record.get("task_id"):
                started = datetime.strptime(record["timestamp"], LOG_TIME)
                starts[str(record["task_id"])].append(started)
    return starts


def recovery(
    fault: Fault,
    rows: dict[str, dict[str, str]],
    starts: dict[str, list[datetime]],
    first_after: str | None,
) -> float | None:
    """Seconds from the injection until the affected tasks ran again (see the docstring)."""
    if fault.affected:
        delays = []
        for task_id in fault.affected:
            again = min((t for t in starts[task_id] if t > fault.injected), default=None)
            if fault.kind != "child_kill":
                again = again or parse_time(rows[task_id]["finished_at"])
                if again is None:
                    return None  # never ran again: counted as lost
            if again is not None:
                delays.append((again - fault.injected).total_seconds())
        # A killed child's task is the first to start again; its neighbours just go on
        # (and may start again later for a later fault).
        pick = min if fault.kind == "child_kill" else max
        return pick(delays, default=None)
    if first_after is None:
        return None
    finished = parse_time(rows[first_after]["finished_at"])
    return None if finished is None else (finished - fault.injected).total_seconds()


def test_mixed_faults_lose_and_duplicate_nothing(stack: Stack, database: Database) -> None:
    rng = random.Random(SEED)
    cluster = sentinel_cluster(stack)
    cluster.wait_healthy(timeout=60)
    injector = Injector(stack, cluster, database)
    kinds = sorted(injector.kinds)
    if database.kind == "sqlite":
        kinds.remove("database_restart")  # a file, no server to restart
    producers = [
        Producer(stack, "soak-short", pace=0.2),
        # About 3 of the 8 slots busy: the queue stays short, so a recovery time measures
        # the fault, not a backlog.
        Producer(stack, "soak-long", pace=4, seconds=lambda: rng.uniform(1, 20)),
    ]
    faults: list[Fault] = []
    started = time.monotonic()
    for producer in producers:
        producer.start()
    try:
        round_: list[str] = []
        while time.monotonic() - started < SOAK_SECONDS:
            time.sleep(rng.uniform(5, 12))
            if not round_:
                round_ = rng.sample(kinds, len(kinds))
            faults.append(injector.inject(round_.pop()))
    finally:
        for producer in producers:
            producer.stop()
    soaked = time.monotonic() - started

    accepted = [s for producer in producers for s in producer.accepted()]
    ids = [str(s.task_id) for s in accepted]

    def all_final() -> dict[str, dict[str, str]] | None:
        rows = ledger_rows(database, ids, ROW_COLUMNS)
        done = all(row["state"] in {"SUCCEEDED", "FAILED", "DEAD"} for row in rows.values())
        return rows if done and len(rows) == len(ids) else None

    try:
        rows = wait_until(all_final, DRAIN_SECONDS, "every accepted task to finish", step=2)
    except TimeoutError:
        rows = ledger_rows(database, ids, ROW_COLUMNS)
    effects = effect_counts(database, ids)
    starts = starts_by_task(stack)
    by_sent = sorted(accepted, key=lambda s: s.sent)
    for fault in faults:
        first_after = next((str(s.task_id) for s in by_sent if s.sent >= fault.at), None)
        fault.recovery_seconds = recovery(fault, rows, starts, first_after)

    succeeded = [i for i in ids if rows.get(i, {}).get("state") == "SUCCEEDED"]
    lost = [i for i in ids if rows.get(i, {}).get("state") != "SUCCEEDED"]
    duplicated = [i for i in ids if effects.get(i, 0) > 1]
    per_kind = {
        kind: summary([f.recovery_seconds for f in faults if f.kind == kind])
        for kind in sorted({f.kind for f in faults})
    }
    report = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": SEED,
        "soak_seconds": round(soaked, 1),
        "accepted": len(accepted),
        "succeeded": len(succeeded),
        "lost": len(lost),
        "effects_duplicated": len(duplicated),
        "refused": sum(len(producer.refused()) for producer in producers),
        "restarts": stack.restarts(),
        "recovery_seconds_by_fault": per_kind,
        "faults": [asdict(fault) for fault in faults],
        "lost_tasks": {i: {**rows.get(i, {}), "error": last_error(database, i)} for i in lost[:20]},
        "duplicated_tasks": duplicated[:20],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    print_table(report)

    assert len(accepted) > 0
    assert {f.kind for f in faults} == set(kinds) or SOAK_SECONDS < 60, per_kind
    assert not lost, report["lost_tasks"]
    assert not duplicated, duplicated


def last_error(database: Database, task_id: str) -> str:
    lines = database.query(f"SELECT last_error FROM task_ledger WHERE id = '{task_id}'")
    return " ".join("\t".join(line) for line in lines)


def summary(values: list[float | None]) -> dict[str, float | int | None]:
    measured = [v for v in values if v is not None]
    return {
        "injected": len(values),
        "measured": len(measured),
        "median": round(statistics.median(measured), 2) if measured else None,
        "max": round(max(measured), 2) if measured else None,
    }


def print_table(report: dict[str, object]) -> None:
    print(f"\n[soak] seed {report['seed']}, {report['soak_seconds']} s")
    for key in ("accepted", "succeeded", "lost", "effects_duplicated", "refused"):
        print(f"[soak] {key:>20}: {report[key]}")
    by_fault = report["recovery_seconds_by_fault"]
    assert isinstance(by_fault, dict)
    print(f"[soak] {'fault':>20}  injected  median s  max s")
    for kind, numbers in by_fault.items():
        print(
            f"[soak] {kind:>20}  {numbers['injected']:>8}  {numbers['median']!s:>8}"
            f"  {numbers['max']!s:>5}"
        )
