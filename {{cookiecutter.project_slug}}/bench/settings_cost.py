"""Settings: what the project's costliest reliability settings cost, one at a time.

Celery's defaults, then the settings added one step at a time (each step keeps the ones
before it) to bench/plain_celery.py's app through BENCH_PLAIN_SETTINGS, each step draining
no-op tasks under prefork -c2 as the worker scenario does; the last step is the project's
own worker (its whole configuration, tasks sent without a ledger row). The steps take
turns per round. Plain Celery publishes each task event on its own, where the project's
worker batches them (consumer.py): the step with events shows what batching saves.
"""

from __future__ import annotations

from typing import Any

from bench import worker_throughput
from bench.rounds import ratio, rotated, summary
from bench.services import Services

# Each step's settings, added to those of the steps before it; None is the project's worker.
STEPS: dict[str, dict[str, Any] | None] = {
    "celery-defaults": {},
    "+ late ack, prefetch 1 (R01, R03)": {"task_acks_late": True, "worker_prefetch_multiplier": 1},
    "+ STARTED state (R22)": {"task_track_started": True},
    "+ task events, one publish each (R26)": {
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    },
    "project-config": None,
}
BASELINE = "celery-defaults"
POOL = "prefork"


def cumulative() -> dict[str, dict[str, Any] | None]:
    """Each step's whole settings: its own and every earlier step's."""
    settings: dict[str, Any] = {}
    steps: dict[str, dict[str, Any] | None] = {}
    for name, added in STEPS.items():
        if added is None:
            steps[name] = None
        else:
            settings = {**settings, **added}
            steps[name] = settings
    return steps


def run(services: Services, *, rounds: int, tasks: int) -> dict[str, Any]:
    steps = cumulative()
    concurrency = worker_throughput.PREFORK_CONCURRENCY
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds):
        for name in rotated(tuple(steps), round_index):
            settings = steps[name]
            if settings is None:
                measured = worker_throughput.drain(
                    services, "project-config", "noop", POOL, concurrency, tasks
                )
            else:
                measured = worker_throughput.drain_celery(
                    services, BASELINE, "noop", POOL, concurrency, tasks, settings=settings
                )
            samples[name].append(measured.tasks_per_second)
            print(f"bench: settings {name}: {measured.tasks_per_second:.1f} tasks/s", flush=True)
    baseline = summary(samples[BASELINE], "tasks/s")
    return {
        "pool": POOL,
        "concurrency": concurrency,
        "tasks": tasks,
        "results": [
            {
                "step": name,
                "settings": steps[name],
                "throughput": summary(samples[name], "tasks/s"),
                "ratio_to_celery_defaults": ratio(summary(samples[name], "tasks/s"), baseline),
            }
            for name in steps
        ],
    }
