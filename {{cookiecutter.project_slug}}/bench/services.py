"""The services every scenario runs against, started once through the test harness.

Redis (Sentinel or standalone, as this project was generated), the ledger database and
the project's API come from `tests/harness`; workers are started per measurement, so a
queue can be filled before anything consumes it. Code that needs the project's settings
runs in a child process with the stack's environment (`child`), as the real processes do.
"""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import psutil
import redis as redis_py
from tests.harness.databases import Database, database_for, kind_of_url
from tests.harness.processes import SupervisedProcess, run_command
from tests.harness.redis import (
    ADMIN_USER,
    RedisDeployment,
    RedisSentinelCluster,
    StandaloneRedis,
    redis_for,
)
from tests.harness.stack import ENTRYPOINTS, PROJECT_DIR, Stack, StackOptions, venv_bin

from bench.generated import default_setting
from bench.producers import Producer

# kombu's Redis transport keeps one list per priority level: "<queue>" for 0 and
# "<queue>\x06\x16<n>" for the others (the project uses ten levels).
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_LEVELS = range(10)
# The queue the project's demo tasks are routed to, and the one a default Celery app uses.
PROJECT_QUEUE = "default"
# The gates still run (their cost is measured) but never refuse: no worker drains the
# queue between purges, and one key sends every request.
BENCH_API_SETTINGS = {
    "API_RATE_LIMIT": "1000000000/second",
    "API_MAX_BACKLOG_DEFAULT": "1000000000",
}
PLAIN_QUEUE = "celery"


def queue_keys(queue: str) -> list[str]:
    """Every Redis list a queue's messages can sit in."""
    return [queue, *(f"{queue}{PRIORITY_SEPARATOR}{level}" for level in PRIORITY_LEVELS if level)]


class Services:
    """Redis, the ledger database and the project's API (no workers, no beat)."""

    def __init__(self, workdir: Path, api_workers: int) -> None:
        self.workdir = workdir
        self.database_kind = kind_of_url(str(default_setting("database_url")))
        self.redis_mode = str(default_setting("redis_mode"))
        self.broker_db = int(default_setting("redis_broker_db"))
        self.result_db = int(default_setting("redis_result_db"))
        self.redis: RedisDeployment = redis_for(self.redis_mode, workdir / "redis")
        self.database: Database = database_for(self.database_kind, workdir / "db")
        workers = {"API_WORKERS": str(api_workers)}
        self.stack = Stack(
            redis=self.redis,
            database=self.database,
            workdir=workdir / "stack",
            # The API with its production worker count (the harness's tests use one).
            options=StackOptions(groups=(), beat=False, env=BENCH_API_SETTINGS | workers),
        )
        # bench/ is importable by the children, which run in the stack's directory.
        self.env = {
            **self.stack.env,
            "PYTHONPATH": str(PROJECT_DIR),
            "REDIS_USERNAME": ADMIN_USER,
            "REDIS_PASSWORD": self.redis.users.password(ADMIN_USER),
        }
        self._producers: dict[str, Producer] = {}
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> Services:
        try:
            self.redis.start()
            self._exit.callback(self.redis.stop)
            self._exit.enter_context(self.database)
            self._exit.enter_context(self.stack)
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._exit.close()

    # --- Redis --------------------------------------------------------------------------

    def master_address(self) -> tuple[str, int]:
        if isinstance(self.redis, RedisSentinelCluster):
            return self.redis.master_address()
        if isinstance(self.redis, StandaloneRedis):
            return self.redis.address
        raise TypeError(f"unknown Redis deployment {self.redis!r}")

    @property
    def redis_password(self) -> str:
        """The operators' admin user's: the bench's own clients and baselines use queue
        and key names outside the application users' ACL patterns."""
        return self.redis.users.password(ADMIN_USER)

    def redis_client(self, db: int) -> redis_py.Redis:
        host, port = self.master_address()
        return redis_py.Redis(
            host=host, port=port, db=db, username=ADMIN_USER, password=self.redis_password
        )

    def backlog(self, client: redis_py.Redis, queue: str) -> int:
        """Messages waiting in a queue (all its priority lists)."""
        pipe = client.pipeline(transaction=False)
        for key in queue_keys(queue):
            pipe.llen(key)
        return sum(int(length) for length in pipe.execute())

    def purge(self, queue: str) -> None:
        """Drop whatever a scenario left in a queue, so the next one starts empty."""
        with self.redis_client(self.broker_db) as client:
            client.delete(*queue_keys(queue))

    def redis_version(self) -> str:
        with self.redis_client(0) as client:
            return str(client.info("server")["redis_version"])

    # --- processes ----------------------------------------------------------------------

    def child(self, module: str, *args: str, timeout: float = 1800) -> Any:
        """Run `python -m bench.<module> ARGS` with the stack's environment; its JSON answer.

        The child prints one JSON document on its last line of output.
        """
        output = run_command(
            [str(venv_bin() / "python"), "-m", f"bench.{module}", *args],
            env=self.env,
            cwd=self.stack.run_dir,
            timeout=timeout,
        )
        return json.loads(output.strip().splitlines()[-1])

    def producer(self, variant: str) -> Producer:
        """The variant's publishing child (bench/producers.py), started on first use."""
        if variant not in self._producers:
            found = Producer(variant, venv_bin() / "python", self.env, self.stack.run_dir)
            self._exit.callback(found.close)
            self._producers[variant] = found
        return self._producers[variant]

    def process(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> SupervisedProcess:
        """A started process with the stack's environment that is not restarted.

        It stops with SIGQUIT (a worker's cold shutdown): by then its queue is drained, and
        a warm shutdown would wait out the soft-shutdown timeout for nothing.
        """
        return SupervisedProcess(
            name,
            argv,
            env={**self.env, **(env or {})},
            cwd=self.stack.run_dir,
            log_dir=self.stack.log_dir,
            restart=False,
            stop_signal=signal.SIGQUIT,
            stop_timeout=20,
        ).start()

    def project_worker(self, pool: str, concurrency: int) -> SupervisedProcess:
        """The project's `default` worker group, through its entrypoint, with this pool."""
        return self.process(
            f"worker-{pool}-{concurrency}",
            ["bash", str(ENTRYPOINTS / "worker.sh"), PROJECT_QUEUE],
            env={
                "WORKER_DEFAULT_POOL": pool,
                "WORKER_DEFAULT_CONCURRENCY": str(concurrency),
            },
        )

    def plain_worker(
        self, pool: str, concurrency: int, settings: dict[str, Any]
    ) -> SupervisedProcess:
        """`celery worker` for bench/plain_celery.py: Celery's defaults plus `settings`."""
        return self.process(
            f"plain-worker-{pool}-{concurrency}",
            [
                str(venv_bin() / "celery"),
                "--app=bench.plain_celery",
                "worker",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                "--hostname=plain@%h",
            ],
            env={"BENCH_PLAIN_SETTINGS": json.dumps(settings)},
        )

    def cpu_seconds(self, process: SupervisedProcess) -> float:
        """User + system CPU time used so far by a process and everything below it."""
        pids = [process.pid, *process.descendants()] if process.pid else []
        seconds = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                seconds += times.user + times.system
        return seconds
