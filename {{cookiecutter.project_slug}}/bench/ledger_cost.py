"""What the ledger costs per task, on the same worker: `make bench`.

Starts Redis + Sentinel, this project's database and one `default` worker through the
test harness, then runs the same number of `demo.echo` tasks twice:

- untracked: sent with `app.send_task` and no ledger row (the worker's ledger lookups
  find nothing: two indexed reads, no writes);
- ledger: sent with `ledger.publish.enqueue` (a row written before the publish, marked
  PUBLISHED after it, claimed and finished by the worker).

Each run is timed from the first send to the last result. Writes bench/results/ledger_cost.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.databases import database_for, kind_of_url
from tests.harness.redis import RedisSentinelCluster
from tests.harness.stack import Stack, StackOptions, venv_bin

from {{ cookiecutter.package_name }}.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"

# Runs in a child process with the stack's environment (the settings are read at import).
DRIVER = """
import sys, time
from celery.result import ResultSet
from PACKAGE.celery_app import app
from PACKAGE.ledger.db import session_scope
from PACKAGE.ledger.publish import enqueue

mode, count = sys.argv[1], int(sys.argv[2])
started = time.perf_counter()
ids = []
for n in range(count):
    if mode == "ledger":
        with session_scope() as session:
            ids.append(enqueue(session, app, "demo.echo", dict(message=str(n))).id)
    else:
        ids.append(app.send_task("demo.echo", kwargs=dict(message=str(n))).id)
published = time.perf_counter()
ResultSet([app.AsyncResult(i) for i in ids]).join(timeout=600, propagate=True)
print(published - started, time.perf_counter() - started)
"""


def run(stack: Stack, mode: str, count: int) -> dict[str, float]:
    output = subprocess.run(  # noqa: S603 - our own interpreter and script
        [
            str(venv_bin() / "python"),
            "-c",
            DRIVER.replace("PACKAGE", stack.package),
            mode,
            str(count),
        ],
        env=stack.env,
        cwd=stack.run_dir,
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    ).stdout.split()
    publish, total = float(output[-2]), float(output[-1])
    return {"publish_seconds": publish, "total_seconds": total, "ms_per_task": 1000 * total / count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        work = Path(scratch)
        # The database this project was generated for (its default DATABASE_URL).
        kind = kind_of_url(Settings.model_fields["database_url"].default.get_secret_value())
        with (
            RedisSentinelCluster(work / "redis") as cluster,
            database_for(kind, work / "db") as database,
            Stack(
                redis=cluster,
                database=database,
                workdir=work / "stack",
                options=StackOptions(groups=("default",), beat=False),
            ) as stack,
        ):
            run(stack, "untracked", 20)  # warm-up
            rounds = {
                mode: [run(stack, mode, options.tasks) for _ in range(options.rounds)]
                for mode in ("untracked", "ledger")
            }
    best = {mode: min(r["total_seconds"] for r in results) for mode, results in rounds.items()}
    report = {
        "tasks_per_round": options.tasks,
        "database": kind,
        "worker": "default group, prefork, settings defaults",
        "rounds": rounds,
        "best_total_seconds": best,
        "ledger_cost_ratio": round(best["ledger"] / best["untracked"], 3),
        "extra_ms_per_task": round(1000 * (best["ledger"] - best["untracked"]) / options.tasks, 3),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ledger_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
