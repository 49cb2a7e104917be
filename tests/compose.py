"""A baked project's docker-compose stack, driven through the real `docker compose` CLI.

The container tier needs a Docker engine, Compose v2 and images. No image registry is
reachable from CI, so `ci/images/build.sh` builds local stand-ins for the official images
and `images()` hands their names to the project through the image variables its compose
file and Dockerfile already expose (PYTHON_IMAGE, REDIS_IMAGE, ...).
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from combinations import TEMPLATE_DIR
from conftest import Result, project_env, run

ENGINE_SCRIPT = TEMPLATE_DIR / "ci" / "docker-engine.sh"
IMAGES_SCRIPT = TEMPLATE_DIR / "ci" / "images" / "build.sh"
# Failed stacks leave their compose logs here (git-ignored) for the CI log collector.
LOG_DIR = TEMPLATE_DIR / ".ci-logs"

# Reconcile and shutdown timings shortened on top of the harness's own test settings, so a
# message lost in the failover is re-published, and `down` returns, within a test.
CONTAINER_SETTINGS = {
    "RECONCILE_INTERVAL": "5",
    "RECONCILE_QUEUED_AFTER": "10",
    "RECONCILE_PUBLISHED_AFTER": "30",
    # Compose reads it from .env: a warm shutdown waits at most TASK_TIME_LIMIT.
    "WORKER_STOP_GRACE_PERIOD": "30s",
}


def fast_settings(project: Path) -> dict[str, str]:
    """The baked harness's TEST_SETTINGS (tests/harness/stack.py: short visibility timeout,
    time limits, watchdog...) plus CONTAINER_SETTINGS: the users' own settings, shortened
    the same way in both tiers. Read from the source, not imported: the bake's
    dependencies are not installed in the template's environment."""
    source = (project / "tests" / "harness" / "stack.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "TEST_SETTINGS" for target in node.targets
        ):
            return {**ast.literal_eval(node.value), **CONTAINER_SETTINGS}
    raise AssertionError(f"no TEST_SETTINGS in {project}/tests/harness/stack.py")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing(message: str) -> None:
    """Skip outside CI (saying what to install); with CI=true a missing piece fails."""
    if running_in_ci():
        pytest.fail(f"{message} (CI=true: the container tier cannot be skipped)")
    pytest.skip(message)


def require_compose() -> None:
    """The `docker compose` CLI (Compose v2) answers; ci/docker-engine.sh installs it."""
    if shutil.which("docker") is None:
        missing("no docker CLI: apt-get install docker.io (or run ci/docker-engine.sh)")
    probe = run(["docker", "compose", "version"], cwd=TEMPLATE_DIR)
    if probe.returncode != 0:
        missing("no Compose v2 plugin: run ci/docker-engine.sh\n" + probe.explain(10))


def images() -> dict[str, str]:
    """Start the engine, install Compose, build the stand-in images; their variables."""
    if os.geteuid() != 0 and not running_in_ci():
        missing("the container tier starts dockerd and builds base images: run it as root")
    for script in (ENGINE_SCRIPT, IMAGES_SCRIPT):
        result = run(["bash", str(script)], cwd=TEMPLATE_DIR, timeout=1800)
        if result.returncode != 0:
            missing(
                "no Docker engine / stand-in images (install docker.io and debootstrap): "
                + result.explain(40)
            )
    found = dict(re.findall(r"^([A-Z_]+_IMAGE)=(\S+)$", result.output, re.MULTILINE))
    assert "PYTHON_IMAGE" in found, result.explain()
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ComposeStack:
    """One baked project's compose stack under a unique project name."""

    path: Path
    images: Mapping[str, str]
    name: str = field(default_factory=lambda: f"tmpl{secrets.token_hex(3)}")
    ports: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # Optional compose profiles a test started services from (down removes them too).
    profiles: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for variable in (
            *("API_PORT", "FLOWER_PORT", "CELERY_EXPORTER_PORT"),
            *("PROMETHEUS_PORT", "ALERTMANAGER_PORT", "GRAFANA_PORT"),
        ):
            self.ports[variable] = free_port()

    @property
    def env(self) -> dict[str, str]:
        env = project_env()
        env.update(self.images)
        env.update({key: str(value) for key, value in self.ports.items()})
        env["COMPOSE_PROJECT_NAME"] = self.name
        # Build through the engine's own BuildKit; the buildx plugin is not installed.
        env["COMPOSE_BAKE"] = "false"
        return env

    def url(self, variable: str) -> str:
        return f"http://127.0.0.1:{self.ports[variable]}"

    def api(self, timeout: float = 30) -> httpx.Client:
        """A client of the stack's API with the admin key generation made."""
        key = self.secret("api_key")
        return httpx.Client(
            base_url=self.url("API_PORT"), timeout=timeout, headers={"X-API-Key": key}
        )

    def secret(self, name: str) -> str:
        """One of the project's secret files (secrets/<name>, deploy/make_secrets.py)."""
        return (self.path / "secrets" / name).read_text().strip()

    def secrets(self) -> dict[str, str]:
        return {path.name: path.read_text().strip() for path in (self.path / "secrets").iterdir()}

    def dotenv(self) -> dict[str, str]:
        pairs = re.findall(r"^([A-Z_]+)=(.*)$", (self.path / ".env").read_text(), re.MULTILINE)
        return dict(pairs)

    def configure(self, settings: Mapping[str, str]) -> None:
        """Append settings to the project's .env (compose passes it to every app service)."""
        with (self.path / ".env").open("a") as env_file:
            env_file.write("\n# container tier\n")
            env_file.writelines(f"{key}={value}\n" for key, value in settings.items())

    def compose(self, *args: str, timeout: float = 600) -> Result:
        return run(["docker", "compose", *args], cwd=self.path, timeout=timeout, env=self.env)

    def must(self, *args: str, timeout: float = 600) -> Result:
        result = self.compose(*args, timeout=timeout)
        if result.returncode != 0:
            self.save_logs()
            pytest.fail(result.explain() + f"\ncompose logs: {self.log_file}")
        return result

    def timed(self, label: str, *args: str, timeout: float = 900) -> Result:
        started = time.monotonic()
        result = self.must(*args, timeout=timeout)
        self.timings[label] = round(time.monotonic() - started, 1)
        return result

    def build_and_start(self) -> None:
        """What a user does: lock, build, `up --wait`."""
        locked = run(["uv", "lock"], cwd=self.path)
        assert locked.returncode == 0, locked.explain()
        self.timed("build_s", "build")
        self.timed("up_wait_s", "up", "--detach", "--wait", "--wait-timeout", "300")

    def services(self) -> dict[str, dict[str, object]]:
        """service -> `docker compose ps` fields (State, Health, ExitCode, Name...)."""
        output = self.must("ps", "--all", "--format", "json").output
        rows: list[dict[str, object]] = []
        for line in output.splitlines():
            line = line.strip()
            if line.startswith("["):
                rows.extend(json.loads(line))
            elif line.startswith("{"):
                rows.append(json.loads(line))
        return {str(row["Service"]): row for row in rows}

    def restarts(self, service: str) -> int:
        container = str(self.services()[service]["Name"])
        inspected = self.docker("inspect", "--format", "{{.RestartCount}}", container)
        return int(inspected.output.strip())

    def docker(self, *args: str) -> Result:
        """A plain `docker` command that must succeed."""
        result = run(["docker", *args], cwd=self.path, timeout=60, env=self.env)
        assert result.returncode == 0, result.explain()
        return result

    def gateway(self, service: str = "api") -> str:
        """The host's address on the compose network `default` (the network's gateway), as
        `service`'s container sees it: where a container reaches a server the test runs
        on the host."""
        container = str(self.services()[service]["Name"])
        template = (
            "{{range $name, $net := .NetworkSettings.Networks}}{{$name}}={{$net.Gateway}} {{end}}"
        )
        pairs = self.docker("inspect", "--format", template, container).output.split()
        gateways = dict(pair.split("=", 1) for pair in pairs)
        default = gateways.get(f"{self.name}_default") or (
            next(iter(gateways.values())) if len(gateways) == 1 else ""
        )
        assert default, f"{container}: no gateway on {self.name}_default: {gateways}"
        return default

    def exec(self, service: str, script: str, timeout: float = 30) -> Result:
        """Run a shell snippet inside a service's container (its environment applies);
        a call that outlives `timeout` counts as failed (returncode -1)."""
        try:
            return self.compose("exec", "-T", service, "sh", "-c", script, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            output = exc.output if isinstance(exc.output, str) else ""
            return Result(command=list(exc.cmd), returncode=-1, output=f"timed out\n{output}")

    @property
    def log_file(self) -> Path:
        return LOG_DIR / f"{self.path.name}-{self.name}.log"

    def save_logs(self) -> Path:
        LOG_DIR.mkdir(exist_ok=True)
        logs = self.compose("logs", "--no-color", "--timestamps", timeout=120).output
        status = self.compose("ps", "--all", timeout=60).output
        self.log_file.write_text(f"{status}\n{logs}")
        return self.log_file

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks still labelled with this project's name."""
        label = f"label=com.docker.compose.project={self.name}"
        found: list[str] = []
        for kind in (["ps", "--all"], ["volume", "ls"], ["network", "ls"]):
            listed = self.docker(*kind, "--quiet", "--filter", label)
            found += [f"{kind[0]} {item}" for item in listed.output.split()]
        return found

    def down(self) -> Result:
        """Stop and remove everything, the services of optional profiles included."""
        started = time.monotonic()
        profiles = [part for name in self.profiles for part in ("--profile", name)]
        result = self.compose(*profiles, "down", "--volumes", "--remove-orphans", "--timeout", "60")
        self.timings.setdefault("down_s", round(time.monotonic() - started, 1))
        return result
