"""Scaling: throughput against worker concurrency, and the ledger's cost against its size.

- Concurrency 1, 2 and 4 of the project's prefork worker on the full ledger path with
  no-op tasks (measured as bench/worker_throughput.py does), taking turns per round.
- Ledgers of growing size (by default 10k, 100k and 1M finished rows), each with 1,000
  stale rows: the time of one reconcile pass (finding the stale rows, which should not
  mean reading the finished ones, and sending a batch of them again: RECONCILE_BATCH_SIZE)
  and `GET /api/v1/tasks/{id}` on a finished row: its p99 with one connection (what the
  lookup itself takes) and its p99 and rate under 16 (what queueing on 2 cores adds).
  The table only grows, so sizes follow each other; rounds repeat within a size.
"""

from __future__ import annotations

from typing import Any

from bench import worker_throughput
from bench.http_load import Load, run_load
from bench.rounds import rotated, summary
from bench.services import PROJECT_QUEUE, Services

# Prefork slots of the concurrency curve.
CONCURRENCIES = (1, 2, 4)
# Stale rows beside the finished ones: more than one reconcile batch (500 by default).
STALE_ROWS = 1000
# wrk connections for the status lookups: one alone, then a load.
LOOKUP_CONNECTIONS = 1
GET_CONNECTIONS = 16


def concurrency_curve(services: Services, *, rounds: int, tasks: int) -> list[dict[str, Any]]:
    samples: dict[int, list[float]] = {c: [] for c in CONCURRENCIES}
    for round_index in range(rounds):
        for concurrency in rotated(CONCURRENCIES, round_index):
            measured = worker_throughput.drain(
                services, "ledger", "noop", "prefork", concurrency, tasks
            )
            samples[concurrency].append(measured.tasks_per_second)
            print(
                f"bench: scaling ledger -c{concurrency}: {measured.tasks_per_second:.1f} tasks/s",
                flush=True,
            )
    return [
        {"concurrency": c, "tasks": tasks, "throughput": summary(samples[c], "tasks/s")}
        for c in CONCURRENCIES
    ]


def ledger_sizes(
    services: Services, *, rounds: int, sizes: list[int], seconds: float
) -> list[dict[str, Any]]:
    results = []
    for size in sorted(sizes):
        filled = services.child("ledger_probe", "fill", str(size), str(STALE_ROWS))
        reconciled = services.child("ledger_probe", "reconcile", str(rounds))
        services.purge(PROJECT_QUEUE)
        url = f"{services.stack.api_url}/api/v1/tasks/{filled['sample_id']}"
        key = {"X-API-Key": services.stack.api_key}
        alone = _lookups(url, key, LOOKUP_CONNECTIONS, rounds=rounds, seconds=seconds)
        loads = _lookups(url, key, GET_CONNECTIONS, rounds=rounds, seconds=seconds)
        results.append(
            {
                "final_rows": size,
                "stale_rows": STALE_ROWS,
                "rows": filled["rows"],
                "fill_seconds": round(filled["seconds"], 2),
                "reconcile_seconds": summary(reconciled["seconds"], "s"),
                "reconcile_redispatched": reconciled["redispatched"],
                "lookup_p99_ms": summary([load.p99_ms for load in alone], "ms"),
                "get_connections": GET_CONNECTIONS,
                "get_p99_ms": summary([load.p99_ms for load in loads], "ms"),
                "get_requests_per_second": summary(
                    [load.requests_per_second for load in loads], "req/s"
                ),
                "get_non_2xx": sum(load.non_2xx for load in (*alone, *loads)),
            }
        )
        print(
            f"bench: ledger {size} rows: reconcile {results[-1]['reconcile_seconds']['median']} s,"
            f" GET p99 {results[-1]['lookup_p99_ms']['median']} ms alone,"
            f" {results[-1]['get_p99_ms']['median']} ms under load",
            flush=True,
        )
    return results


def _lookups(
    url: str, key: dict[str, str], connections: int, *, rounds: int, seconds: float
) -> list[Load]:
    return [
        run_load(url, post=False, connections=connections, seconds=seconds, headers=key)
        for _ in range(rounds)
    ]


def run(
    services: Services, *, rounds: int, tasks: int, sizes: list[int], seconds: float
) -> dict[str, Any]:
    return {
        "concurrency": concurrency_curve(services, rounds=rounds, tasks=tasks),
        "ledger": ledger_sizes(services, rounds=rounds, sizes=sizes, seconds=seconds),
    }
