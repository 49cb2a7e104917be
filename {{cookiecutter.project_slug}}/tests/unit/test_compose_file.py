"""docker-compose.yml keeps its promises: health, restarts, grace periods, image variables.

These read the file only; running the stack is the container tier's job.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.queues import QUEUE_NAMES
from {{ cookiecutter.package_name }}.settings import Settings

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
ONE_SHOT = {"migrate"}
WORKERS = tuple(f"worker-{queue}" for queue in QUEUE_NAMES)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    found: dict[str, dict[str, Any]] = document["services"]
    return found


def seconds(duration: str) -> float:
    """A compose duration (`6m`, `40s`, `1m30s`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms)", duration)
    assert parts, f"not a duration: {duration!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def default_of(value: str) -> str:
    """`${NAME:-default}` -> default; a plain value is its own default."""
    match = re.fullmatch(r"\$\{[A-Z_]+:-(.+)\}", value)
    return match.group(1) if match else value


def test_every_long_running_service_has_a_healthcheck_and_a_restart_policy(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", f"{name} is not restarted"


def test_app_services_wait_for_healthy_dependencies_and_the_migration(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            expected = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert condition["condition"] == expected, (name, dependency)
    for name in ("api", "beat", *WORKERS):
        assert "migrate" in services[name]["depends_on"], name


@pytest.mark.reliability("R20")
def test_worker_grace_period_outlasts_the_hard_time_limit(
    services: dict[str, dict[str, Any]],
) -> None:
    """A warm shutdown lets running tasks finish: compose must not SIGKILL them earlier."""
    limit = Settings().task_time_limit
    for name in WORKERS:
        grace = seconds(default_of(services[name]["stop_grace_period"]))
        assert grace > limit, f"{name}: stop_grace_period {grace} s <= TASK_TIME_LIMIT {limit} s"


def test_every_image_is_overridable_by_a_variable(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        assert re.fullmatch(r"\$\{[A-Z_]+_IMAGE:-[^}]+\}", image), f"{name}: image {image!r}"


def test_app_containers_are_read_only_with_a_tmpfs(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if "/app/deploy/entrypoints/" not in " ".join(service.get("command", [])):
            continue
        assert service.get("read_only") is True, name
        assert "/tmp" in service.get("tmpfs", []), name


# Each app service's own Redis user (deploy/redis/users.acl).
REDIS_USERS = {
    "api": "api",
    **dict.fromkeys(WORKERS, "worker"),
    "beat": "beat",
{%- if cookiecutter.use_flower == "yes" %}
    "flower": "flower",
{%- endif %}
}


def mounted_secrets(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def test_secrets_are_files_each_mounted_only_where_it_is_used(
    services: dict[str, dict[str, Any]],
) -> None:
    text = COMPOSE_FILE.read_text()
    # No password reaches a container through the environment, nor through interpolation.
    assert not re.findall(r"\$\{[A-Z_]*(?:PASSWORD|API_KEY)[A-Z_]*", text)
    declared = set(yaml.safe_load(text)["secrets"])
    used = set()
    for name, service in services.items():
        mounted = mounted_secrets(service)
        used |= mounted
        for key, value in (service.get("environment") or {}).items():
            # MARIADB_RANDOM_ROOT_PASSWORD is a yes/no flag, not a password.
            is_flag = key == "MARIADB_RANDOM_ROOT_PASSWORD" and value == "yes"
            assert not key.endswith("PASSWORD") or is_flag, f"{name}: {key} in the environment"
            if str(value).startswith("/run/secrets/"):
                assert str(value).removeprefix("/run/secrets/") in mounted, (name, key)
        # An app service holds its own Redis user's password and no other user's.
        redis_users = {s for s in mounted if s.startswith("redis_user_")}
        own = REDIS_USERS.get(name)
        if own is not None:
            assert redis_users == {f"redis_user_{own}_password"}, (name, redis_users)
            env = service["environment"]
            assert env["REDIS_USERNAME"] == own, name
            # Production requires of it exactly the secrets of its kind (settings.py).
            assert env["PROCESS_KIND"] == own, name
            assert env["REDIS_PASSWORD_FILE"] == f"/run/secrets/redis_user_{own}_password", name
    assert used == declared, f"declared but never mounted: {sorted(declared - used)}"
    assert services["migrate"]["environment"]["PROCESS_KIND"] == "migrate"
    assert not mounted_secrets(services["migrate"]) & {
        s for s in declared if s.startswith("redis_user_")
    }, "the migrations get a Redis password"


# The setting each mounted secret file feeds (through <SETTING>_FILE).
SETTING_OF_SECRET = {
    "sentinel_user_client_password": "redis_sentinel_password",
    "database_password": "database_password",
{%- if cookiecutter.use_flower == "yes" %}
    "flower_password": "flower_password",
{%- endif %}
}
# Every secret production may require; one a container is not given stays empty.
REQUIRED_SECRETS = ("redis_password", "redis_sentinel_password"{% if cookiecutter.use_flower == "yes" %}, "flower_password"{% endif %})


def test_each_app_container_has_every_secret_production_asks_of_it(
    services: dict[str, dict[str, Any]],
) -> None:
    """With ENVIRONMENT=production a process refuses to start without a secret its kind
    needs: the secrets compose mounts into each app container must be enough."""
    for name, service in services.items():
        kind = (service.get("environment") or {}).get("PROCESS_KIND")
        if kind is None:
            continue
        given: dict[str, Any] = {}
        for secret in mounted_secrets(service):
            setting = SETTING_OF_SECRET.get(secret, "redis_password")
            given[setting] = f"{secret}-a-strong-value"
        for setting in REQUIRED_SECRETS:
            given.setdefault(setting, "")
        url = service["environment"]["DATABASE_URL"]
        try:
            Settings(environment="production", process_kind=kind, database_url=url, **given)
        except ValidationError as refused:
            pytest.fail(f"{name} would not start in production: {refused}")
