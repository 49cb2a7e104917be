"""What Sentry costs the service when it answers, hangs or is slow: `python -m bench.sentry_cost`.

Not part of `make bench`: run it by hand (it needs what `make test-integration` needs).
Redis and the ledger database are started once; each measurement starts the API and one
`default` worker through their entrypoints (tests/harness/stack.py) with the variant's
SENTRY_DSN and SENTRY_TRACES_SAMPLE_RATE=1, so every request and task sends a transaction:

- `off`: no DSN, the SDK is not initialised;
- `answering`: a local receiver (tests/harness/sentry_receiver.py) that answers at once;
- `hang`: the receiver accepts connections and never answers;
- `slow`: the receiver answers after `--slow-delay` seconds.

Per measurement: `--tasks` POST /api/v1/tasks (demo.echo, sequential, no worker running
yet; latency median and p95), then a worker drains them (tasks/s from the first start to
the last finish in the ledger), then the time the worker and the API take to stop (SIGTERM
to exit). Variants take turns within a round, each round
starting one further on (bench/rounds.py); figures are medians over `--rounds`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from tests.harness.databases import Database, database_for, kind_of_url
from tests.harness.probes import ledger_rows, parse_time, wait_until
from tests.harness.redis import RedisDeployment, redis_for
from tests.harness.sentry_receiver import SentryReceiver
from tests.harness.stack import Stack, StackOptions

from bench.generated import default_setting
from bench.rounds import rotated, summary
from bench.services import BENCH_API_SETTINGS

VARIANTS = ("off", "answering", "hang", "slow")


def measure(
    redis: RedisDeployment,
    database: Database,
    receiver: SentryReceiver,
    variant: str,
    workdir: Path,
    tasks: int,
) -> dict[str, float]:
    receiver.set_mode("hang" if variant == "hang" else "slow" if variant == "slow" else "answer")
    env = {
        **BENCH_API_SETTINGS,
        "SENTRY_DSN": "" if variant == "off" else receiver.dsn(),
        "SENTRY_TRACES_SAMPLE_RATE": "1",
    }
    # The API alone first: the tasks wait in the queue until the worker starts.
    stack = Stack(
        redis=redis,
        database=database,
        workdir=workdir,
        options=StackOptions(groups=(), beat=False, env=env),
    )
    stack.start()
    try:
        latencies: list[float] = []
        ids: list[str] = []
        with stack.api_client() as api:
            for number in range(tasks):
                sent = time.monotonic()
                ids.append(api.submit_ok("demo.echo", {"message": f"bench {number}"}))
                latencies.append(time.monotonic() - sent)
        worker = stack.start_extra("worker", "default")
        wait_until(
            lambda: _succeeded(database, ids) == tasks, 300, "every task SUCCEEDED", step=0.5
        )
        stop_started = time.monotonic()
        worker.stop()
        worker_stop = time.monotonic() - stop_started
        stop_started = time.monotonic()
        stack.processes["api"].stop()
        api_stop = time.monotonic() - stop_started
    finally:
        stack.stop()
        receiver.set_mode("answer")
    rows = ledger_rows(database, ids, ("started_at", "finished_at"))
    first = min(_time(row["started_at"]) for row in rows.values())
    last = max(_time(row["finished_at"]) for row in rows.values())
    ordered = sorted(latencies)
    return {
        "post_median_ms": statistics.median(latencies) * 1000,
        "post_p95_ms": ordered[int(0.95 * (len(ordered) - 1))] * 1000,
        # The worker draining the backlog: first start to last finish, in the ledger.
        "tasks_per_s": tasks / (last - first).total_seconds(),
        "worker_stop_s": worker_stop,
        "api_stop_s": api_stop,
    }


def _succeeded(database: Database, ids: list[str]) -> int:
    rows = ledger_rows(database, ids, ("state",))
    return sum(1 for row in rows.values() if row["state"] == "SUCCEEDED")


def _time(text: str) -> datetime:
    parsed = parse_time(text)
    if parsed is None:
        raise ValueError(f"no timestamp in {text!r}")
    return parsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow-delay", type=float, default=2.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    options = parser.parse_args(argv)
    variants = [name for name in options.variants.split(",") if name]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")

    samples: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-sentry-") as scratch:
        root = Path(scratch)
        kind = kind_of_url(str(default_setting("database_url")))
        redis = redis_for(str(default_setting("redis_mode")), root / "redis")
        redis.start()
        try:
            with database_for(kind, root / "db") as database, SentryReceiver() as receiver:
                receiver.delay = options.slow_delay
                for round_index in range(options.rounds):
                    for variant in rotated(variants, round_index):
                        workdir = root / f"stack-{round_index}-{variant}"
                        figures = measure(
                            redis, database, receiver, variant, workdir, options.tasks
                        )
                        print(json.dumps({"round": round_index, "variant": variant, **figures}))
                        for name, value in figures.items():
                            samples[variant].setdefault(name, []).append(value)
        finally:
            redis.stop()
    result = {
        "tasks": options.tasks,
        "rounds": options.rounds,
        "slow_delay_s": options.slow_delay,
        "figures": {
            variant: {name: summary(values, name.rsplit("_", 1)[-1]) for name, values in by.items()}
            for variant, by in samples.items()
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if options.output:
        options.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
