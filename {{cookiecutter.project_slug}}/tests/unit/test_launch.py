"""Each process kind's command line, as the entrypoint scripts exec it (R19)."""

from __future__ import annotations

from typing import Any

import pytest

from {{ cookiecutter.package_name }} import launch
from {{ cookiecutter.package_name }}.settings import Settings


def make(**overrides: Any) -> Settings:
    """Settings from defaults and overrides only: no .env, no leftovers from other tests."""
    return Settings(_env_file=None, **overrides)


def command_for(*argv: str, settings: Settings | None = None) -> list[str]:
    """The command an entrypoint script would exec for these arguments."""
    options = launch.build_parser().parse_args(argv)
    return launch.command_for(options.kind, options, settings or make())


@pytest.mark.reliability("R10", "R19")
def test_each_worker_group_consumes_its_queue_with_its_pool() -> None:
    settings = make(worker_low_pool="gevent", worker_low_concurrency=40, worker_high_pool="prefork")
    low = command_for("worker", "low", settings=settings)
    assert "--queues=low" in low
    assert "--pool=gevent" in low
    assert "--concurrency=40" in low
    high = command_for("worker", "high", settings=settings)
    assert "--queues=high" in high
    assert "--pool=prefork" in high


def test_a_worker_without_queue_group_is_refused() -> None:
    with pytest.raises(SystemExit, match="queue group"):
        command_for("worker")


@pytest.mark.reliability("R10", "R19")
def test_a_group_spelled_out_by_flags_consumes_several_queues() -> None:
    """A Kubernetes Deployment's form: any group name, several queues, own pool and slots."""
    command = command_for(
        "worker", "--name=bulk", "--queues=low,default", "--pool=gevent", "--concurrency=30"
    )
    assert "--queues=low,default" in command
    assert "--pool=gevent" in command
    assert "--concurrency=30" in command
    assert "--hostname=bulk@%h" in command


def test_flags_override_a_named_group() -> None:
    command = command_for("worker", "low", "--concurrency=7", settings=make())
    assert "--queues=low" in command
    assert "--concurrency=7" in command


def test_a_worker_on_an_unknown_queue_is_refused_with_the_known_ones() -> None:
    with pytest.raises(SystemExit, match=r"unknown queues hihg.*high, default, low"):
        command_for("worker", "--queues=hihg", "--pool=prefork", "--concurrency=1")


@pytest.mark.reliability("R29")
def test_beat_runs_as_its_own_process() -> None:
    command = command_for("beat")
    assert command[:4] == ["celery", "--app", launch.CELERY_APP, "beat"]
    assert not any(part.startswith("--schedule") for part in command)


def test_api_runs_gunicorn_with_uvicorn_workers() -> None:
    command = command_for("api")
    assert command[0] == "gunicorn"
    assert any(part.endswith("api.gunicorn_conf") for part in command)
{%- if cookiecutter.use_flower == "yes" %}


@pytest.mark.reliability("R35")
def test_flower_credentials_stay_off_the_command_line() -> None:
    settings = make(flower_user="admin", flower_password="s3cret")
    command = command_for("flower", settings=settings)
    assert command[1:3] == ["-m", "{{ cookiecutter.package_name }}.flower_server"]
    assert "flower" in command
    assert not any("s3cret" in part for part in command)
{%- endif %}
