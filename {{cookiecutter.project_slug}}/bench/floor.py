"""The Redis floor: plain redis-py LPUSH / BRPOP, no Celery, no acks, no results.

What moving a message through this Redis costs at all, so the Celery figures have a floor
to be read against. `fill()` pushes the messages (from the bench process); the consumers
run as a child: `python -m bench.floor CONCURRENCY MODE SLEEP`, MODE `processes` (prefork's
shape) or `threads` (one process, as gevent's greenlets share one). The Redis URL comes in
the BENCH_FLOOR_URL environment variable, never on the command line (it has a password).
Each consumer pops until the list stays empty for a second; the child prints
`{"done": <messages>, "last_done": <epoch seconds of the last one finished>}`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable

import redis as redis_py

KEY = "bench:floor"
# A message about as big as a small Celery message body.
MESSAGE = json.dumps({"task": "floor.noop", "kwargs": {"message": "x" * 200}})
# A consumer that waited this long for a message stops.
IDLE_SECONDS = 1


def fill(client: redis_py.Redis, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for _ in range(count):
        pipe.lpush(KEY, MESSAGE)
    pipe.execute()


def consume(url: str, sleep: float) -> tuple[int, float]:
    """Pop and "run" messages until the list stays empty; (count, time of the last done)."""
    done, last_done = 0, 0.0
    with redis_py.Redis.from_url(url) as client:
        while client.brpop([KEY], timeout=IDLE_SECONDS) is not None:
            if sleep:
                time.sleep(sleep)
            done += 1
            last_done = time.time()
    return done, last_done


def _consume_into(
    url: str, sleep: float, answers: multiprocessing.Queue[tuple[int, float]]
) -> None:
    answers.put(consume(url, sleep))


def run_processes(url: str, concurrency: int, sleep: float) -> list[tuple[int, float]]:
    answers: multiprocessing.Queue[tuple[int, float]] = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=_consume_into, args=(url, sleep, answers))
        for _ in range(concurrency)
    ]
    for worker in workers:
        worker.start()
    found = [answers.get() for _ in workers]
    for worker in workers:
        worker.join()
    return found


def run_threads(url: str, concurrency: int, sleep: float) -> list[tuple[int, float]]:
    found: list[tuple[int, float]] = []
    lock = threading.Lock()

    def target() -> None:
        answer = consume(url, sleep)
        with lock:
            found.append(answer)

    threads = [threading.Thread(target=target) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found


RUNNERS: dict[str, Callable[[str, int, float], list[tuple[int, float]]]] = {
    "processes": run_processes,
    "threads": run_threads,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("mode", choices=sorted(RUNNERS))
    parser.add_argument("sleep", type=float)
    options = parser.parse_args()
    found = RUNNERS[options.mode](os.environ["BENCH_FLOOR_URL"], options.concurrency, options.sleep)
    print(json.dumps({"done": sum(n for n, _ in found), "last_done": max(t for _, t in found)}))


if __name__ == "__main__":
    main()
