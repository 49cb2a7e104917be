"""The pods tier: the Helm chart's pods, exactly as `helm template` renders them, run as
containers on a Docker engine by tests/pods/podrunner.py (a kubelet's test double).

Images: no pulls. The app image is built from the Dockerfile (PYTHON_IMAGE, as for
compose), or taken from APP_IMAGE; the others come from the variables docker-compose.yml
reads ({% if cookiecutter.database == "postgresql" %}POSTGRES_IMAGE{% else %}MARIADB_IMAGE{% endif %}, REDIS_IMAGE{% if cookiecutter.use_celery_exporter == "yes" %}, REDIS_EXPORTER_IMAGE, CELERY_EXPORTER_IMAGE{% endif %}) and must be
present on the engine. A missing docker, helm or image skips the tier, and fails it with
CI=true. Figures land in tests/pods/results/last-run.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.binaries import missing_dependency
from tests.harness.chart import FULLNAME, NAMESPACE, ROOT, render
from tests.pods.podrunner import Cluster, Pod, docker

RESULTS = Path(__file__).parent / "results"
FIGURES: dict[str, Any] = {}
API_SERVICE = f"{FULLNAME}-api"
DEFAULT_IMAGES = {
    "REDIS_IMAGE": "redis:7.2-bookworm",
{%- if cookiecutter.database == "postgresql" %}
    "POSTGRES_IMAGE": "postgres:17-bookworm",
{%- else %}
    "MARIADB_IMAGE": "mariadb:11.4",
{%- endif %}
{%- if cookiecutter.use_celery_exporter == "yes" %}
    "CELERY_EXPORTER_IMAGE": "danihodovic/celery-exporter:0.11.2",
    "REDIS_EXPORTER_IMAGE": "oliver006/redis_exporter:v1.45.0-alpine",
{%- endif %}
}
# The users' reconcile timings, shortened (as the container tier does) so that a task a
# failover lost is re-sent within a test.
FAST_SETTINGS = {
    "RECONCILE_INTERVAL": "5",
    "RECONCILE_QUEUED_AFTER": "10",
    "RECONCILE_PUBLISHED_AFTER": "30",
    # The beat's interval entry (urgent-ping-tick) every few seconds, not every minute.
    "BEAT_TICK_SECONDS": "5",
}


def record(section: str, **figures: Any) -> None:
    """Figures of a scenario: printed, and written to tests/pods/results/last-run.json."""
    FIGURES.setdefault(section, {}).update(figures)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "last-run.json").write_text(json.dumps(FIGURES, indent=2, default=str) + "\n")
    print(f"pods tier {section}: {json.dumps(figures, default=str)}")


def split(image: str) -> dict[str, str]:
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:
        return {"repository": image, "tag": "latest"}
    return {"repository": repository, "tag": tag}


def image_present(image: str) -> bool:
    return docker("image", "inspect", image, check=False).returncode == 0


def build_context_hash() -> str:
    """The image's inputs, hashed: one tag per source tree, never another tree's image."""
    digest = hashlib.sha256()
    paths = [ROOT / name for name in ("Dockerfile", "pyproject.toml", "uv.lock", "README.md")]
    for folder in (ROOT / "src", ROOT / "deploy" / "entrypoints"):
        files = (p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        paths += sorted(files)
    for path in paths:
        if path.exists():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def engine() -> None:
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        missing_dependency("no Docker engine answers: install docker.io and start dockerd")


@pytest.fixture(scope="session")
def images(engine: None) -> dict[str, str]:
    found = {name: os.environ.get(name, default) for name, default in DEFAULT_IMAGES.items()}
    app = os.environ.get("APP_IMAGE", "")
    if not app:
        app = f"{{ cookiecutter.project_slug }}-pods:{build_context_hash()}"
        python = os.environ.get("PYTHON_IMAGE", "python:3.11-slim-bookworm")
        started = time.monotonic()
        built = subprocess.run(
            ["docker", "build", "--quiet", "--build-arg", f"PYTHON_IMAGE={python}", "-t", app, "."],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if built.returncode != 0:
            missing_dependency(f"no app image built (PYTHON_IMAGE={python}):\n{built.stderr}")
        record("images", app_build_s=round(time.monotonic() - started, 1))
    found["APP_IMAGE"] = app
    absent = [f"{name}={image}" for name, image in found.items() if not image_present(image)]
    if absent:
        missing_dependency(f"images not on the engine (no pulls here): {', '.join(absent)}")
    return found


def chart_values(images: dict[str, str], keys: list[dict[str, Any]]) -> dict[str, Any]:
    """The chart's default values, with the in-chart database, the local images, an API
    key and FAST_SETTINGS."""
    return {
        "image": {**split(images["APP_IMAGE"]), "pullPolicy": "Never"},
        "app": {"env": {"LOG_LEVEL": "INFO", "LOG_JSON": "true", **FAST_SETTINGS}},
        "api": {"auth": {"keys": keys}},
        "redis": {
            "image": split(images["REDIS_IMAGE"]),
{%- if cookiecutter.use_celery_exporter == "yes" %}
            "metrics": {"image": split(images["REDIS_EXPORTER_IMAGE"])},
{%- endif %}
        },
{%- if cookiecutter.use_celery_exporter == "yes" %}
        "exporter": {"image": split(images["CELERY_EXPORTER_IMAGE"])},
{%- endif %}
        "database": {
            "internal": {
                "enabled": True,
                "image": split(images["{% if cookiecutter.database == "postgresql" %}POSTGRES_IMAGE{% else %}MARIADB_IMAGE{% endif %}"]),
            }
        },
    }


class Stack:
    """A running release: the cluster, the API through its Service name, helpers."""

    def __init__(self, cluster: Cluster, api_key: str) -> None:
        self.cluster, self.api_key = cluster, api_key
        self.api_port = cluster.port_forward(API_SERVICE, 8000)

    def api(self, timeout: float = 30) -> httpx.Client:
        """A client whose requests go to the API Service's name (Host included)."""
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.api_port}",
            headers={"X-API-Key": self.api_key, "Host": API_SERVICE},
            timeout=timeout,
        )

    def exec(self, pod: Pod, container: str, script: str, timeout: float = 30) -> str:
        """A shell snippet's output in a pod's container ("" when it does not answer)."""
        name = next(c.name for c in pod.containers if c.spec["name"] == container)
        try:
            done = docker("exec", name, "sh", "-c", script, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout.decode(errors="replace")


@pytest.fixture(scope="module")
def stack(images: dict[str, str]) -> Iterator[Stack]:
    from {{ cookiecutter.package_name }}.api.keys import Scope, new_entry

    key, entry = new_entry("pods-tier", [Scope.TASKS_SUBMIT, Scope.TASKS_READ])
    objects = render(chart_values(images, [entry.model_dump(mode="json")]), base=False)
    cluster = Cluster(objects, namespace=NAMESPACE, pause_image=images["APP_IMAGE"])
    started = time.monotonic()
    try:
        cluster.start()
        yield Stack(cluster, key)
    finally:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "last-run.log").write_text(cluster.dump())
        cluster.close()
        record("teardown", leftovers=cluster.leftovers(), total_s=round(time.monotonic() - started))
