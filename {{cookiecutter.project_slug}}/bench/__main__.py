"""The benchmark suite: `python -m bench` (`make bench`), or `--smoke` (`make bench-smoke`).

Starts Redis, the ledger database and the API once through tests/harness, runs the
scenarios (bench/README.md explains each), writes every figure to
`<output>/<YYYY-MM-DD>.json` with the machine, the versions and this command line, draws
`<output>/report.png` and rewrites the results tables of the README. With `--smoke` the
numbers are small, the output goes to a scratch directory (with a copy of the README),
and the run fails unless every scenario wrote positive figures.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    api_requests,
    http_load,
    machine,
    producer_cost,
    recovery,
    report,
    scaling,
    settings_cost,
    worker_throughput,
)
from bench.services import Services
from bench.verify import SCENARIOS, problems

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
# The production default of API_WORKERS: both apps get this many gunicorn workers.
API_WORKERS = 2

# Each scenario's module; its docstring says what it measures and goes into the figures.
MODULES = {
    "worker": worker_throughput,
    "settings": settings_cost,
    "producer": producer_cost,
    "api": api_requests,
    "scaling": scaling,
    "recovery": recovery,
}
# `--smoke`: every scenario, as little of each as still measures something.
SMOKE = {
    "tasks": 60,
    "sleep_tasks": 30,
    "rounds": 1,
    "api_seconds": 3.0,
    "connections": "16,64",
    "ledger_sizes": "10000",
    "scaling_tasks": 40,
    "lookup_seconds": 3.0,
}


def parse_options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add = parser.add_argument
    add("--tasks", type=int, default=500, help="no-op tasks per worker run")
    add("--sleep-tasks", type=int, default=200, help="20 ms tasks per worker run")
    add("--rounds", type=int, default=3, help="rounds of every scenario (at least 3 for a report)")
    add("--gevent-concurrency", type=int, default=worker_throughput.GEVENT_CONCURRENCY)
    add("--api-seconds", type=float, default=5.0, help="load time per API run")
    add("--connections", default="16,64", help="HTTP connections of the API runs")
    add("--ledger-sizes", default="10000,100000,1000000", help="finished rows per ledger size")
    add("--scaling-tasks", type=int, default=300, help="tasks per concurrency-scaling run")
    add("--lookup-seconds", type=float, default=3.0, help="GET load per ledger size and round")
    add("--scenarios", default=",".join(SCENARIOS), help="which scenarios to run")
    add("--output", type=Path, default=RESULTS, help="where the JSON and the PNG go")
    add("--smoke", action="store_true", help="tiny numbers, scratch output, check the figures")
    if "--smoke" in argv:
        # The smoke's numbers replace the defaults; options given explicitly still win.
        parser.set_defaults(**SMOKE)
    options = parser.parse_args(argv)
    if options.smoke and options.output.resolve() == RESULTS.resolve():
        parser.error("--smoke writes to a scratch directory: give --output")
    unknown = set(options.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: choose from {', '.join(SCENARIOS)}")
    return options


def integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def scenario_runners(options: argparse.Namespace) -> dict[str, Callable[[Services], Any]]:
    rounds = options.rounds
    return {
        "worker": lambda s: worker_throughput.run(
            s,
            rounds=rounds,
            noop_tasks=options.tasks,
            sleep_tasks=options.sleep_tasks,
            gevent_concurrency=options.gevent_concurrency,
        ),
        "settings": lambda s: settings_cost.run(s, rounds=rounds, tasks=options.tasks),
        "producer": lambda s: producer_cost.run(s, rounds=rounds, tasks=options.tasks),
        "api": lambda s: api_requests.run(
            s,
            rounds=rounds,
            seconds=options.api_seconds,
            connections=integers(options.connections),
        ),
        "scaling": lambda s: scaling.run(
            s,
            rounds=rounds,
            tasks=options.scaling_tasks,
            sizes=integers(options.ledger_sizes),
            seconds=options.lookup_seconds,
        ),
        "recovery": lambda s: recovery.run(),
    }


def run_suite(options: argparse.Namespace, command: str) -> dict[str, Any]:
    started = time.monotonic()
    wanted = options.scenarios.split(",")
    if {"api", "scaling"} & set(wanted):
        # Before anything starts: without wrk under CI=true this stops the run at once.
        http_load.loader_name()
    document: dict[str, Any] = {
        "date": datetime.now(UTC).date().isoformat(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "options": {k: str(v) for k, v in vars(options).items()},
        "machine": machine.machine(),
        "scenarios": {},
    }
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as scratch,
        Services(Path(scratch), API_WORKERS) as services,
    ):
        document["database"] = services.database_kind
        document["redis_mode"] = services.redis_mode
        document["versions"] = machine.versions(services)
        for name, run in scenario_runners(options).items():
            if name in wanted:
                print(f"bench: scenario {name}", flush=True)
                begun = time.monotonic()
                document["scenarios"][name] = {
                    "description": (MODULES[name].__doc__ or "").strip(),
                    **run(services),
                    "seconds": round(time.monotonic() - begun, 1),
                }
    document["duration_seconds"] = round(time.monotonic() - started, 1)
    return document


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    options = parse_options(args)
    command = shlex.join(["python", "-m", "bench", *args])
    document = run_suite(options, command)
    output: Path = options.output
    output.mkdir(parents=True, exist_ok=True)
    figures = output / f"{document['date']}.json"
    figures.write_text(json.dumps(document, indent=2) + "\n")
    readme = README
    if output.resolve() != RESULTS.resolve():
        # Scratch runs keep the committed README as it is: they rewrite a copy.
        readme = output / "README.md"
        shutil.copyfile(README, readme)
    report.write(document, output / "report.png", readme)
    print(f"bench: wrote {figures}, {output / 'report.png'} and {readme}", flush=True)
    if options.smoke:
        found = problems(document)
        if found:
            raise SystemExit("bench: smoke check failed:\n" + "\n".join(found))
        print(f"bench: smoke check passed: {', '.join(SCENARIOS)} wrote figures", flush=True)


if __name__ == "__main__":
    main()
