"""Worker throughput: tasks published first, then drained by a worker started afterwards.

Variants, each with no-op and 20 ms tasks, under prefork and gevent:

- `celery-defaults`: bench/plain_celery.py (Celery's defaults) under `celery worker`;
- `project-config`: the project's worker (deploy/entrypoints/worker.sh), tasks sent with
  `app.send_task`, so no ledger row: what the project's Celery configuration costs;
- `ledger`: the project's worker, tasks sent with `ledger.publish.enqueue`: the full path;
- `redis-floor`: redis-py LPUSH / BRPOP of as many messages (bench/floor.py).

The clock runs from the first start (the queue's length first drops below what was
published, polled every few milliseconds) to the last done (the latest `date_done` of the
results, or the floor's last pop), so neither publishing nor the worker's boot counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.harness.processes import SupervisedProcess
from tests.harness.redis import ADMIN_USER
from tests.harness.stack import venv_bin

from bench import floor
from bench.producers import SLEEP_SECONDS
from bench.rounds import ratio, rotated, summary
from bench.services import PLAIN_QUEUE, PROJECT_QUEUE, Services

# What is compared (ratios are to BASELINE), with which tasks, under which pools.
VARIANTS = ("celery-defaults", "project-config", "ledger", "redis-floor")
BASELINE = "celery-defaults"
KINDS = ("noop", "sleep")
POOLS = ("prefork", "gevent")
# The project's own prefork default (WORKER_DEFAULT_CONCURRENCY): one slot per core here.
PREFORK_CONCURRENCY = 2
# Greenlets are cheap: 20 slots let 20 ms sleeps overlap (at most 1,000 tasks/s) without
# one process's event loop juggling more waiting tasks than it can feed.
GEVENT_CONCURRENCY = 20
# How often the queue's length is read while waiting for the first task to start.
START_POLL_SECONDS = 0.002
# How often the results are read while waiting for the last one.
DONE_POLL_SECONDS = 0.2
# A task that ends in one of these broke the run: its figure would not be throughput.
FAILED_STATES = {"FAILURE", "REVOKED"}


@dataclass(frozen=True)
class Drain:
    tasks: int
    seconds: float

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / self.seconds


def concurrency_of(pool: str, gevent_concurrency: int = GEVENT_CONCURRENCY) -> int:
    return PREFORK_CONCURRENCY if pool == "prefork" else gevent_concurrency


def wait_first_start(waiting: Callable[[], int], published: int, timeout: float) -> float:
    """The time the first message left the queue (`waiting()` dropped below `published`)."""
    deadline = time.monotonic() + timeout
    while waiting() >= published:
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing consumed within {timeout:.0f} s")
        time.sleep(START_POLL_SECONDS)
    return time.time()


def _done_at(raw: bytes | None) -> float | None:
    """The epoch time a result was stored, or None while the task is not finished."""
    if raw is None:
        return None
    meta = json.loads(raw)
    if meta.get("status") in FAILED_STATES:
        raise RuntimeError(f"a benchmark task ended {meta['status']}: {meta.get('result')}")
    if meta.get("status") != "SUCCESS" or not meta.get("date_done"):
        return None
    done = datetime.fromisoformat(str(meta["date_done"]))
    return (done if done.tzinfo else done.replace(tzinfo=UTC)).timestamp()


def wait_last_done(
    services: Services, ids: list[str], worker: SupervisedProcess, timeout: float
) -> float:
    keys = [f"celery-task-meta-{task_id}" for task_id in ids]
    deadline = time.monotonic() + timeout
    with services.redis_client(services.result_db) as client:
        while True:
            done = [_done_at(raw) for raw in client.mget(keys)]
            if all(at is not None for at in done):
                return max(at for at in done if at is not None)
            if not worker.running:
                raise RuntimeError(f"{worker.name} exited mid-run\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                missing = [task_id for task_id, at in zip(ids, done, strict=True) if at is None]
                # Every log line naming them, and the tail: which stage each one reached.
                traces = [
                    line
                    for line in worker.log_text().splitlines()
                    if any(m in line for m in missing)
                ]
                raise TimeoutError(
                    f"{len(missing)} of {len(ids)} tasks unfinished: {missing}\n"
                    + "\n".join(traces)
                    + f"\n{worker.log_tail(120)}"
                )
            time.sleep(DONE_POLL_SECONDS)


def drain_celery(
    services: Services,
    variant: str,
    kind: str,
    pool: str,
    concurrency: int,
    count: int,
    settings: dict[str, Any] | None = None,
) -> Drain:
    """One drain by a Celery worker; `settings` are added to the plain app's (settings_cost)."""
    plain = variant == BASELINE
    queue = PLAIN_QUEUE if plain else PROJECT_QUEUE
    services.purge(queue)
    published = services.producer(variant).publish(kind, count)
    ids: list[str] = published["ids"]
    timeout = 120 + count * (SLEEP_SECONDS + 0.1)
    with services.redis_client(services.broker_db) as client:
        if plain:
            worker = services.plain_worker(pool, concurrency, settings or {})
        else:
            worker = services.project_worker(pool, concurrency)
        try:
            first = wait_first_start(lambda: services.backlog(client, queue), len(ids), timeout=120)
            last = wait_last_done(services, ids, worker, timeout)
        finally:
            worker.stop()
    return Drain(len(ids), last - first)


def drain_floor(services: Services, kind: str, pool: str, concurrency: int, count: int) -> Drain:
    host, port = services.master_address()
    url = f"redis://{ADMIN_USER}:{services.redis_password}@{host}:{port}/{services.broker_db}"
    with services.redis_client(services.broker_db) as client:
        client.delete(floor.KEY)
        floor.fill(client, count)
        mode = "processes" if pool == "prefork" else "threads"
        sleep = SLEEP_SECONDS if kind == "sleep" else 0.0
        consumers = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [str(venv_bin() / "python"), "-m", "bench.floor", str(concurrency), mode, str(sleep)],
            env={**services.env, "BENCH_FLOOR_URL": url},
            cwd=services.stack.run_dir,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            first = wait_first_start(lambda: int(client.llen(floor.KEY)), count, timeout=60)
            output, _ = consumers.communicate(timeout=60 + count * sleep)
        finally:
            if consumers.poll() is None:
                consumers.kill()
                consumers.wait()
    answer = json.loads(output.strip().splitlines()[-1])
    if answer["done"] != count:
        raise RuntimeError(f"the floor consumers popped {answer['done']} of {count} messages")
    return Drain(count, float(answer["last_done"]) - first)


def drain(
    services: Services, variant: str, kind: str, pool: str, concurrency: int, count: int
) -> Drain:
    """One measurement: publish `count` tasks, start the consumer, time the drain."""
    if variant == "redis-floor":
        return drain_floor(services, kind, pool, concurrency, count)
    return drain_celery(services, variant, kind, pool, concurrency, count)


def run(
    services: Services, *, rounds: int, noop_tasks: int, sleep_tasks: int, gevent_concurrency: int
) -> dict[str, Any]:
    """Every (task kind, pool) cell, each variant once per round in rotating order."""
    cells = [(kind, pool) for kind in KINDS for pool in POOLS]
    drains: dict[tuple[str, str, str], list[Drain]] = {}
    for round_index in range(rounds):
        for kind, pool in cells:
            count = noop_tasks if kind == "noop" else sleep_tasks
            concurrency = concurrency_of(pool, gevent_concurrency)
            for variant in rotated(VARIANTS, round_index):
                measured = drain(services, variant, kind, pool, concurrency, count)
                drains.setdefault((variant, kind, pool), []).append(measured)
                print(
                    f"bench: worker {variant} {kind} {pool} -c{concurrency}:"
                    f" {measured.tasks_per_second:.1f} tasks/s",
                    flush=True,
                )
    results = []
    for kind, pool in cells:
        baseline = summary([d.tasks_per_second for d in drains[(BASELINE, kind, pool)]], "tasks/s")
        for variant in VARIANTS:
            figure = summary([d.tasks_per_second for d in drains[(variant, kind, pool)]], "tasks/s")
            results.append(
                {
                    "variant": variant,
                    "task": kind,
                    "pool": pool,
                    "concurrency": concurrency_of(pool, gevent_concurrency),
                    "tasks": drains[(variant, kind, pool)][0].tasks,
                    "throughput": figure,
                    "ratio_to_celery_defaults": ratio(figure, baseline),
                }
            )
    return {
        "sleep_seconds": SLEEP_SECONDS,
        "prefork_concurrency": PREFORK_CONCURRENCY,
        "gevent_concurrency": gevent_concurrency,
        "cpu_count": os.cpu_count(),
        "results": results,
    }
