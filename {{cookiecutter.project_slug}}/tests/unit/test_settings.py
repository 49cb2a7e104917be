"""Settings come from the environment and refuse combinations that would break guarantees."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.queues import QUEUE_NAMES
from {{ cookiecutter.package_name }}.settings import Settings


def make(**overrides: Any) -> Settings:
    """Settings from defaults and overrides only: no .env, no leftovers from other tests."""
    return Settings(_env_file=None, **overrides)


@pytest.mark.reliability("R16")
def test_hard_limit_must_exceed_soft_limit() -> None:
    with pytest.raises(ValidationError, match="TASK_TIME_LIMIT must exceed"):
        make(task_soft_time_limit=60, task_time_limit=60)


@pytest.mark.reliability("R04")
def test_visibility_timeout_must_outlast_the_hard_limit() -> None:
    with pytest.raises(ValidationError, match="VISIBILITY_TIMEOUT must exceed"):
        make(task_soft_time_limit=10, task_time_limit=20, visibility_timeout=20)


@pytest.mark.reliability("R05")
def test_retry_backoff_cannot_outwait_the_visibility_timeout() -> None:
    with pytest.raises(ValidationError, match="TASK_RETRY_BACKOFF_MAX"):
        make(visibility_timeout=400, task_time_limit=330, task_retry_backoff_max=100)


def test_values_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "s1:26379, s2:26379")
    monkeypatch.setenv("WORKER_LOW_POOL", "prefork")
    monkeypatch.setenv("API_TASK_ALLOWLIST", "demo.echo,demo.sleep")
    settings = make()
    assert settings.redis_sentinels == ("s1:26379", "s2:26379")
    assert settings.worker_group("low").pool == "prefork"
    assert settings.api_task_allowlist == ("demo.echo", "demo.sleep")


def test_every_queue_has_its_worker_group_from_its_own_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for concurrency, queue in enumerate(QUEUE_NAMES, start=3):
        monkeypatch.setenv(f"WORKER_{queue.upper()}_CONCURRENCY", str(concurrency))
        monkeypatch.setenv(f"WORKER_{queue.upper()}_POOL", "threads")
        monkeypatch.setenv(f"API_MAX_BACKLOG_{queue.upper()}", str(concurrency * 10))
    settings = make()
    assert list(settings.worker_groups) == list(QUEUE_NAMES)
    assert list(settings.api_max_backlogs) == list(QUEUE_NAMES)
    for concurrency, queue in enumerate(QUEUE_NAMES, start=3):
        group = settings.worker_group(queue)
        assert (group.name, group.queues) == (queue, (queue,))
        assert (group.pool, group.concurrency) == ("threads", concurrency)
        assert settings.api_max_backlogs[queue] == concurrency * 10


def test_an_unknown_pool_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_HIGH_POOL", "eventlet")
    with pytest.raises(ValidationError, match="worker_high_pool"):
        make()


@pytest.mark.reliability("R31")
def test_sentinel_urls_list_every_sentinel_with_an_escaped_password() -> None:
    settings = make(
        redis_mode="sentinel",
        redis_sentinels="a:1,b:2,c:3",
        redis_password="p@ss/word",
        redis_broker_db=0,
    )
    assert settings.broker_url == (
        "sentinel://:p%40ss%2Fword@a:1/0;sentinel://:p%40ss%2Fword@b:2/0;"
        "sentinel://:p%40ss%2Fword@c:3/0"
    )
    assert settings.result_backend_url.endswith("@c:3/1")


def test_standalone_mode_uses_one_redis_url() -> None:
    settings = make(redis_mode="standalone", redis_address="r:6379", redis_password="")
    assert settings.broker_url == "redis://r:6379/0"


def test_crontab_needs_five_fields() -> None:
    with pytest.raises(ValidationError, match="five fields"):
        make(beat_report_crontab="0 3 * *")


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    """Readable stand-ins for a CA, a client certificate and its key."""
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in paths.values():
        path.write_text("not parsed here\n")
    return {name: str(path) for name, path in paths.items()}


@pytest.mark.reliability("R50")
def test_redis_tls_verifies_the_server_and_shows_the_client_certificate(
    tls_files: dict[str, str],
) -> None:
    settings = make(
        redis_mode="standalone",
        redis_address="r:6380",
        redis_tls=True,
        redis_tls_ca_file=tls_files["ca"],
        redis_tls_cert_file=tls_files["cert"],
        redis_tls_key_file=tls_files["key"],
    )
    assert settings.broker_url.startswith("rediss://")
    assert settings.redis_tls_options() == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": True,
        "ssl_ca_certs": tls_files["ca"],
        "ssl_certfile": tls_files["cert"],
        "ssl_keyfile": tls_files["key"],
    }
    assert make(redis_tls=False).redis_tls_options() == {}
    assert make(redis_mode="standalone").broker_url.startswith("redis://")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"redis_tls_ca_file": "ca"}, "REDIS_TLS is off"),
        ({"redis_tls": True, "redis_tls_cert_file": "cert"}, "both REDIS_TLS_CERT_FILE"),
        ({"redis_tls": True, "redis_tls_ca_file": "/nonexistent/ca.pem"}, "cannot read"),
    ],
)
def test_inconsistent_tls_settings_are_refused(
    tls_files: dict[str, str], given: dict[str, Any], message: str
) -> None:
    values = {key: tls_files.get(value, value) for key, value in given.items()}
    with pytest.raises(ValidationError, match=message):
        make(**values)
