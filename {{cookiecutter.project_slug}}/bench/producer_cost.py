"""Producer cost: milliseconds per task to publish, with no worker running.

`apply_async` with Celery's defaults, `app.send_task` with the project's configuration,
and `ledger.publish.enqueue` (a row, a commit, the publish, the PUBLISHED mark), each from
its own child process (bench/producers.py), timed from the second task of a batch to its
last. What is published is thrown away afterwards.
"""

from __future__ import annotations

from typing import Any

from bench.producers import VARIANTS
from bench.rounds import ratio, rotated, summary
from bench.services import PLAIN_QUEUE, PROJECT_QUEUE, Services

# Ratios are to Celery's defaults; CALLS names what each variant's producer calls.
BASELINE = "celery-defaults"
CALLS = {
    "celery-defaults": "Task.apply_async",
    "project-config": "app.send_task",
    "ledger": "ledger.publish.enqueue",
}


def run(services: Services, *, rounds: int, tasks: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_index in range(rounds):
        for variant in rotated(VARIANTS, round_index):
            published = services.producer(variant).publish("noop", tasks)
            samples[variant].append(1000 * published["seconds"] / published["timed"])
            services.purge(PLAIN_QUEUE if variant == BASELINE else PROJECT_QUEUE)
            print(f"bench: producer {variant}: {samples[variant][-1]:.3f} ms/task", flush=True)
    baseline = summary(samples[BASELINE], "ms/task")
    results = []
    for variant in VARIANTS:
        figure = summary(samples[variant], "ms/task")
        results.append(
            {
                "variant": variant,
                "call": CALLS[variant],
                "tasks": tasks,
                "ms_per_task": figure,
                "ratio_to_celery_defaults": ratio(figure, baseline),
            }
        )
    return {"results": results}
