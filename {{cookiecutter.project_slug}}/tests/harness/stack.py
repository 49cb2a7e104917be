"""The project's own processes, started exactly as deployments start them.

Every process goes through its entrypoint script in deploy/entrypoints/ (worker.sh
high|default|low, beat.sh, api.sh{% if cookiecutter.use_flower == "yes" %}, flower.sh{% endif %}), configured only through the environment
variables of settings.py, and supervised with a restart policy: workers, beat and the API
come back when they crash, as they would under Compose or Kubernetes (kombu 5.7 can exit
on a Sentinel failover; the restart absorbs it, and `restarts()` tells how often).

    with Stack(redis=cluster, database=db, workdir=tmp_path) as stack:
        client = stack.api_client()
"""

from __future__ import annotations

import os
{%- if cookiecutter.use_flower == "yes" %}
import secrets
{%- endif %}
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from {{ cookiecutter.package_name }}.api.keys import KeyDocument, Scope, new_entry
from tests.harness.api import ApiClient
from tests.harness.databases import Database
from tests.harness.ports import LOOPBACK, free_port{% if cookiecutter.use_flower == "yes" %}, wait_for_port{% endif %}
from tests.harness.processes import ProcessIdentity, SupervisedProcess, run_command
from tests.harness.redis import RedisDeployment
from tests.harness.scratch import ScratchDir
from tests.harness.waiting import NotYet, wait_until

PROJECT_DIR = Path(__file__).resolve().parents[2]
ENTRYPOINTS = PROJECT_DIR / "deploy" / "entrypoints"
WORKER_GROUPS = ("high", "default", "low")

# Short timings through the same settings users have; settings.py checks their consistency
# (TASK_RETRY_BACKOFF_MAX < VISIBILITY_TIMEOUT - TASK_TIME_LIMIT).
TEST_SETTINGS = {
    "ENVIRONMENT": "test",
    "LOG_JSON": "true",
    "LOG_LEVEL": "INFO",
    "VISIBILITY_TIMEOUT": "20",
    "TASK_SOFT_TIME_LIMIT": "8",
    "TASK_TIME_LIMIT": "10",
    "TASK_RETRY_BACKOFF_MAX": "5",
    "TASK_DEFAULT_RETRY_DELAY": "1",
    "UNACKED_RESTORE_INTERVAL": "2",
    "WORKER_SOFT_SHUTDOWN_TIMEOUT": "2",
    "API_WORKERS": "1",
    "API_TIMEOUT": "60",
    "WORKER_WATCHDOG_INTERVAL": "3",
    "WORKER_WATCHDOG_TIMEOUT": "30",
}

# A ready worker logs "<name>@<host> ready." once it consumes.
WORKER_READY = r"@\S+ ready\."
READY_TIMEOUT = 60.0  # seconds for the stack, or an extra worker, to become ready


def package_name() -> str:
    """The importable package under src/ (the one with the Celery app)."""
    found = sorted(p.parent.name for p in (PROJECT_DIR / "src").glob("*/celery_app.py"))
    if len(found) != 1:
        raise RuntimeError(f"expected one package with celery_app.py under src/, found {found}")
    return found[0]


def venv_bin() -> Path:
    """The bin/ directory of the interpreter running the tests (the project's venv)."""
    return Path(sys.executable).parent


@dataclass
class StackOptions:
    """What to run and how: `env` overrides any variable (e.g. WORKER_LOW_POOL=prefork)."""

    env: dict[str, str] = field(default_factory=dict)
    groups: tuple[str, ...] = WORKER_GROUPS
    beat: bool = True
{%- if cookiecutter.use_flower == "yes" %}
    # Flower is opt-in: only the tests about it pay for its start-up.
    flower: bool = False
{%- endif %}
    restart: bool = True
    stop_timeout: float = 20.0


class Stack:
    """API, workers, beat{% if cookiecutter.use_flower == "yes" %} (and Flower){% endif %} against the given Redis and database."""

    def __init__(
        self,
        *,
        redis: RedisDeployment,
        database: Database,
        workdir: str | Path | None = None,
        options: StackOptions | None = None,
    ) -> None:
        self.redis = redis
        self.database = database
        self.options = options or StackOptions()
        self._scratch = ScratchDir(workdir, "stack-")
        self.workdir = self._scratch.path
        self.run_dir = self.workdir / "run"
        self.log_dir = self.workdir / "logs"
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
{%- if cookiecutter.use_flower == "yes" %}
        self.flower_port: int | None = None
        self.flower_auth = ("admin", secrets.token_urlsafe(12))
{%- endif %}
        self.package = package_name()
        # The API's key file (re-read on change): `api_key` holds every scope.
        self.api_keys_file = self.run_dir / "api-keys.json"
        self.api_key = self.add_api_key("harness", tuple(Scope))
        self.env = self._environment()
        self.processes: dict[str, SupervisedProcess] = {}

    # --- configuration ----------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        if sys.prefix != sys.base_prefix:
            env["VIRTUAL_ENV"] = sys.prefix
        env.pop("PYTHONHOME", None)
        env["PYTHONUNBUFFERED"] = "1"
        if env.pop("PYTHONDONTWRITEBYTECODE", ""):
            # Without cached bytecode every process start recompiles celery, fastapi,
            # sqlalchemy... (seconds of CPU each); cache it inside the venv instead of
            # next to the sources, which is what the variable wanted to avoid.
            env.setdefault("PYTHONPYCACHEPREFIX", str(venv_bin().parent / ".pycache"))
        env.update(TEST_SETTINGS)
        env.update(self.redis.env())
        env.update(self.database.env())
        env["API_BIND"] = f"{LOOPBACK}:{self.api_port}"
        env["API_KEYS_FILE"] = str(self.api_keys_file)
{%- if cookiecutter.use_sentry == "yes" %}
        env["SENTRY_DSN"] = ""
{%- endif %}
        # Temporary files of the processes stay in the stack's directory.
        env["TMPDIR"] = str(self.run_dir / "tmp")
{%- if cookiecutter.use_flower == "yes" %}
        if self.options.flower:
            self.flower_port = free_port()
            env["FLOWER_PORT"] = str(self.flower_port)
            env["FLOWER_ADDRESS"] = LOOPBACK
            env["FLOWER_USER"], env["FLOWER_PASSWORD"] = self.flower_auth
{%- endif %}
        env.update(self.options.env)
        return env

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

{%- if cookiecutter.use_flower == "yes" %}

    @property
    def flower_url(self) -> str | None:
        return None if self.flower_port is None else f"http://{LOOPBACK}:{self.flower_port}"
{%- endif %}

    # --- lifecycle --------------------------------------------------------------------

    def _entrypoint(
        self,
        kind: str,
        *args: str,
        restart: bool,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> SupervisedProcess:
        script = ENTRYPOINTS / f"{kind}.sh"
        return SupervisedProcess(
            name or "-".join([kind, *args]),
            ["bash", str(script), *args],
            # Each component as its own Redis user (deploy/redis/users.acl).
            env={**self.env, **self.redis.credentials(kind), **(env or {})},
            cwd=self.run_dir,
            log_dir=self.log_dir,
            restart=restart,
            stop_timeout=self.options.stop_timeout,
        )

    def migrate(self) -> None:
        """deploy/entrypoints/migrate.sh once, if the project has it (not supervised)."""
        script = ENTRYPOINTS / "migrate.sh"
        if script.exists():
            self.log_dir.mkdir(parents=True, exist_ok=True)
            run_command(
                ["bash", str(script)],
                env=self.env,
                cwd=self.run_dir,
                timeout=120,
                log_file=self.log_dir / "migrate.log",
            )

    def start(self) -> Stack:
        restart = self.options.restart
        try:
            self.migrate()
            for group in self.options.groups:
                self.processes[f"worker-{group}"] = self._entrypoint(
                    "worker", group, restart=restart
                )
            if self.options.beat:
                self.processes["beat"] = self._entrypoint("beat", restart=restart)
            # gunicorn merges its workers' metrics through files in this directory (the
            # API's only: other processes must not write their metrics there).
            api_env = {"PROMETHEUS_MULTIPROC_DIR": str(self.run_dir / "prometheus")}
            self.processes["api"] = self._entrypoint("api", restart=restart, env=api_env)
{%- if cookiecutter.use_flower == "yes" %}
            if self.options.flower:
                self.processes["flower"] = self._entrypoint("flower", restart=restart)
{%- endif %}
            for process in self.processes.values():
                process.start()
            self.wait_ready(READY_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def start_extra(
        self,
        kind: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        restart: bool | None = None,
    ) -> SupervisedProcess:
        """One more process through its entrypoint (a second beat, another worker...).

        It is stopped with the stack (stopping it earlier is fine). A worker is returned
        once it consumes, under a node name of its own (`--name`, as a second process of
        one group on one host needs).
        """
        base = "-".join([kind, *args])
        count = sum(1 for name in self.processes if name.startswith(f"{base}-extra-"))
        name = f"{base}-extra-{count + 1}"
        if kind == "worker":
            args = (*args, f"--name={name}")
        extra_env = dict(env or {})
        if kind == "beat":
            # Its own schedule file, as a beat in another container would have.
            extra_env.setdefault("BEAT_SCHEDULE_FILE", str(self.run_dir / f"{name}-schedule"))
        process = self._entrypoint(
            kind,
            *args,
            restart=self.options.restart if restart is None else restart,
            env=extra_env,
            name=name,
        )
        self.processes[process.name] = process
        process.start()
        if kind == "worker":
            process.wait_for_log(WORKER_READY, READY_TIMEOUT)
        return process

    def stop(self) -> None:
        """Stop every process in parallel (producers first), leaving nothing running."""
        errors: list[BaseException] = []

        def stop_all(processes: Iterable[SupervisedProcess]) -> None:
            def stop_one(process: SupervisedProcess) -> None:
                try:
                    process.stop()
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=stop_one, args=(p,)) for p in processes]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        producers = [p for name, p in self.processes.items() if not name.startswith("worker-")]
        stop_all(producers)
        stop_all(p for name, p in self.processes.items() if name.startswith("worker-"))
        self._scratch.cleanup()
        if errors:
            raise RuntimeError(f"stopping the stack failed: {errors}")

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- readiness --------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for name in self.worker_names:
            self.wait_worker_ready(name, max(deadline - time.monotonic(), 1))
        self.wait_api_ready(max(deadline - time.monotonic(), 1))
{%- if cookiecutter.use_flower == "yes" %}
        if self.flower_port is not None:
            wait_for_port(self.flower_port, max(deadline - time.monotonic(), 1))
{%- endif %}

    def wait_worker_ready(self, name: str, timeout: float = 60) -> None:
        """Wait for the current incarnation of worker `name` to log that it consumes."""
        self.processes[name].wait_for_log(WORKER_READY, timeout)

    def wait_api_ready(self, timeout: float = 60) -> None:
        """GET /readyz answers 200 (broker and result backend reachable)."""

        def ready() -> bool:
            response = httpx.get(f"{self.api_url}/readyz", timeout=5)
            if response.status_code != 200:
                raise NotYet(f"{response.status_code} {response.text}")
            return True

        api = self.processes["api"]
        wait_until(ready, timeout, "API ready", ignore=(httpx.HTTPError,), detail=api.log_tail)

    # --- views ------------------------------------------------------------------------

    @property
    def worker_names(self) -> list[str]:
        return [name for name in self.processes if name.startswith("worker-")]

    def worker(self, group: str) -> SupervisedProcess:
        return self.processes[f"worker-{group}"]

    def restarts(self) -> dict[str, int]:
        return {name: process.restarts for name, process in self.processes.items()}

    def identities(self) -> set[ProcessIdentity]:
        return {i for process in self.processes.values() for i in process.identities()}

    def add_api_key(self, name: str, scopes: Iterable[Scope]) -> str:
        """A new key in the API's key file (live within a second); returns the key."""
        path = self.api_keys_file
        document = KeyDocument.model_validate_json(path.read_text()) if path.exists() else None
        document = document or KeyDocument()
        key, entry = new_entry(name, tuple(scopes))
        document.keys.append(entry)
        path.write_text(document.model_dump_json())
        return key

    def api_client(self, timeout: float = 30, api_key: str | None = None) -> ApiClient:
        """A client with the all-scopes key, or with `api_key`."""
        return ApiClient(self.api_url, timeout=timeout, api_key=api_key or self.api_key)

    def celery(self, *args: str, timeout: float = 60) -> str:
        """Run `celery --app <package>.celery_app ARGS` with the stack's environment."""
        return run_command(
            [str(venv_bin() / "celery"), "--app", f"{self.package}.celery_app", *args],
            env=self.env,
            cwd=self.run_dir,
            timeout=timeout,
        )

    def worker_nodename(self, group: str) -> str:
        """The Celery node name of a group's worker (launch.py: --hostname=<group>@%h)."""
        return f"{group}@{socket.gethostname()}"

    def ping_workers(self, timeout: float = 10) -> str:
        """`celery inspect ping` to every worker of the stack (R45); returns the answer.

        Naming the destinations lets the command return as soon as all of them replied.
        """
        destinations = ",".join(self.worker_nodename(g) for g in self.options.groups)
        return self.celery(
            "inspect",
            "ping",
            f"--timeout={timeout}",
            f"--destination={destinations}",
            timeout=timeout + 60,
        )
