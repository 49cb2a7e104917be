"""Publish tasks the way each variant does, from a child with the stack's environment.

    python -m bench.producers VARIANT      (then one "KIND COUNT" request per stdin line)

- `celery-defaults`: `apply_async` on bench/plain_celery.py's tasks;
- `project-config`: `app.send_task` on the project's app (its celeryconfig, no ledger row);
- `ledger`: `ledger.publish.enqueue` in its own `session_scope()` per task (a row written,
  published after the commit, marked PUBLISHED), as the API does per request.

The child lives as long as the scenario (`Producer`), so its start-up is paid once.
For each request one task is published first, untimed, and the others are timed; it
answers with one line: ANSWER followed by `{"ids": [...], "seconds": <time of the timed
ones>, "timed": <their count>}` (anything else it prints, such as logs, is skipped).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# What each task kind runs: a no-op, or a 20 ms sleep.
SLEEP_SECONDS = 0.02
# The publishing paths compared, and the task kinds each can publish.
VARIANTS = ("celery-defaults", "project-config", "ledger")
KINDS = ("noop", "sleep")
# Marks the child's answer lines among anything else it prints.
ANSWER = "bench-producer-answer "

Publisher = Callable[[int], str]


def plain_publisher(kind: str) -> Publisher:
    from bench.plain_celery import noop, sleep

    if kind == "noop":
        return lambda n: str(noop.apply_async(kwargs={"message": str(n)}).id)
    return lambda n: str(sleep.apply_async(kwargs={"seconds": SLEEP_SECONDS}).id)


def project_task(kind: str, n: int) -> tuple[str, dict[str, object]]:
    if kind == "noop":
        return "demo.echo", {"message": str(n)}
    return "demo.sleep", {"seconds": SLEEP_SECONDS}


def project_publisher(kind: str) -> Publisher:
    from {{ cookiecutter.package_name }}.celery_app import app

    def send(n: int) -> str:
        name, kwargs = project_task(kind, n)
        return str(app.send_task(name, kwargs=kwargs).id)

    return send


def ledger_publisher(kind: str) -> Publisher:
    from {{ cookiecutter.package_name }}.celery_app import app
    from {{ cookiecutter.package_name }}.ledger.db import session_scope
    from {{ cookiecutter.package_name }}.ledger.publish import enqueue

    def send(n: int) -> str:
        name, kwargs = project_task(kind, n)
        with session_scope() as session:
            record = enqueue(session, app, name, dict(kwargs))
        return record.id

    return send


PUBLISHERS: dict[str, Callable[[str], Publisher]] = {
    "celery-defaults": plain_publisher,
    "project-config": project_publisher,
    "ledger": ledger_publisher,
}


def publish(variant: str, kind: str, count: int) -> dict[str, object]:
    send = PUBLISHERS[variant](kind)
    ids = [send(0)]
    started = time.perf_counter()
    ids.extend(send(n) for n in range(1, count))
    seconds = time.perf_counter() - started
    return {"ids": ids, "seconds": seconds, "timed": count - 1}


class Producer:
    """A running `python -m bench.producers VARIANT`, asked for batches over a pipe."""

    def __init__(self, variant: str, python: Path, env: Mapping[str, str], cwd: Path) -> None:
        self.variant = variant
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [str(python), "-m", "bench.producers", variant],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def publish(self, kind: str, count: int) -> dict[str, Any]:
        if count < 2:
            raise ValueError("count must be at least 2 (one untimed, one timed)")
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{kind} {count}\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(ANSWER):
                answer: dict[str, Any] = json.loads(line.removeprefix(ANSWER))
                return answer
        raise RuntimeError(f"producer {self.variant} exited with {self.process.wait()}")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=VARIANTS)
    variant = parser.parse_args().variant
    for request in sys.stdin:
        kind, count = request.split()
        print(ANSWER + json.dumps(publish(variant, kind, int(count))), flush=True)


if __name__ == "__main__":
    main()
