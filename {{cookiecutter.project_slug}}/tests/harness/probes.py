"""Read-only probes of a running stack for tests: ledger rows, side effects, worker-log
events, raw Redis; and waiting for them."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, cast

import pytest
import redis as redis_py

from tests.harness.databases import Database
from tests.harness.processes import SupervisedProcess, run_command
from tests.harness.redis import RedisSentinelCluster
from tests.harness.stack import Stack, venv_bin
from tests.harness.waiting import NotYet
from tests.harness.waiting import wait_until as wait_until  # the one polling helper

# kombu keeps one Redis list per priority step: "default", "default\x06\x165", ...
PRIORITY_SEPARATOR = b"\x06\x16"
LEDGER_COLUMNS = (
    "state",
    "attempts",
    "dispatches",
    "worker",
    "last_error",
    "replay_of",
    "created_at",
    "published_at",
    "started_at",
    "finished_at",
)


# --- ledger -------------------------------------------------------------------------------


def parse_time(text: str | None) -> datetime | None:
    """A timestamp as the database client prints it (naive UTC in the ledger)."""
    if not text or text in {"NULL", "None"}:
        return None
    return datetime.fromisoformat(text.strip().replace("T", " ")[:26])


def ledger(database: Database, task_id: str) -> dict[str, str]:
    rows = database.query(
        f"SELECT {', '.join(LEDGER_COLUMNS)} FROM task_ledger WHERE id = '{task_id}'"
    )
    assert rows, f"no ledger row for {task_id}"
    return dict(zip(LEDGER_COLUMNS, rows[0], strict=True))


def ledger_rows(
    database: Database, task_ids: list[str], columns: Sequence[str] = LEDGER_COLUMNS
) -> dict[str, dict[str, str]]:
    """Ledger rows of many tasks at once, by id (`columns` without free text, such as
    last_error, survive any content: the client's output is split on tabs and lines)."""
    found: dict[str, dict[str, str]] = {}
    for start in range(0, len(task_ids), 200):
        chunk = task_ids[start : start + 200]
        listed = ", ".join(f"'{task_id}'" for task_id in chunk)
        rows = database.query(
            f"SELECT id, {', '.join(columns)} FROM task_ledger WHERE id IN ({listed})"
        )
        for row in rows:
            found[row[0]] = dict(zip(columns, row[1:], strict=True))
    return found


def wait_ledger(
    database: Database, task_id: str, states: set[str], timeout: float = 60
) -> dict[str, str]:
    def reached() -> dict[str, str]:
        row = ledger(database, task_id)
        if row["state"] not in states:
            raise NotYet(row)
        return row

    return wait_until(reached, timeout, f"task {task_id} in {states}", step=0.25)


def effect_counts(database: Database, task_ids: list[str]) -> dict[str, int]:
    """How many demo_effects rows each task wrote (absent = 0)."""
    counts = dict.fromkeys(task_ids, 0)
    for start in range(0, len(task_ids), 200):
        listed = ", ".join(f"'{task_id}'" for task_id in task_ids[start : start + 200])
        rows = database.query(
            f"SELECT task_id, COUNT(*) FROM demo_effects WHERE task_id IN ({listed})"
            " GROUP BY task_id"
        )
        for task_id, count in rows:
            counts[task_id] = int(count)
    return counts


def effects(database: Database, task_id: str) -> int:
    return effect_counts(database, [task_id])[task_id]


def effect_times(database: Database, task_ids: list[str]) -> dict[str, datetime]:
    """When each task's side effect was committed (demo_effects.created_at)."""
    listed = ", ".join(f"'{task_id}'" for task_id in task_ids)
    rows = database.query(
        f"SELECT task_id, created_at FROM demo_effects WHERE task_id IN ({listed})"
    )
    return {task_id: cast(datetime, parse_time(created)) for task_id, created in rows}


# --- worker logs --------------------------------------------------------------------------


def log_events(process: SupervisedProcess, since: int = 0) -> Iterator[dict[str, Any]]:
    """The JSON log records of a process (other lines, e.g. Celery's banner, skipped)."""
    for line in process.log_text(since).splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield record


def event_times(
    process: SupervisedProcess, task_id: str, event: str, since: int = 0
) -> list[datetime]:
    """Timestamps of a task's log records with this `event` (task_started, task_retry...)."""
    return [
        datetime.strptime(record["timestamp"], "%Y-%m-%d %H:%M:%S,%f")
        for record in log_events(process, since)
        if record.get("task_id") == task_id and record.get("event") == event
    ]


# --- Redis --------------------------------------------------------------------------------


def redis_client(stack: Stack, db: int = 0, **options: Any) -> redis_py.Redis:
    """A client of the current master (db 0 = broker, db 1 = results)."""
    return stack.redis.master_client(db=db, **options)


def sentinel_cluster(stack: Stack) -> RedisSentinelCluster:
    """The stack's Sentinel cluster, or a skip naming why (a standalone project)."""
    if not isinstance(stack.redis, RedisSentinelCluster):
        pytest.skip("project generated with REDIS_MODE=standalone: no Sentinel to fail over")
    return stack.redis


def queue_keys(client: redis_py.Redis, queue: str) -> list[bytes]:
    """The Redis lists of a queue: one per priority step."""
    name = queue.encode()
    keys = cast(list[bytes], client.keys(f"{queue}*"))
    return [key for key in keys if key == name or key.startswith(name + PRIORITY_SEPARATOR)]


def queue_length(client: redis_py.Redis, queue: str) -> int:
    """R43: the backlog of a queue, by LLEN over its priority lists."""
    return sum(int(client.llen(key)) for key in queue_keys(client, queue))


# --- processes ----------------------------------------------------------------------------


def run_python(stack: Stack, code: str) -> str:
    """Run a snippet with the stack's environment (the project's settings and app)."""
    return run_command(
        [str(venv_bin() / "python"), "-c", code], env=stack.env, cwd=stack.run_dir, timeout=60
    )


def restart_and_wait(stack: Stack, name: str, restarts_before: int, timeout: float = 60) -> None:
    """After resuming supervision: the process came back and (a worker) consumes again."""
    process = stack.processes[name]
    process.wait_for_restart(restarts_before, timeout)
    if name.startswith("worker-"):
        stack.wait_worker_ready(name, timeout)
