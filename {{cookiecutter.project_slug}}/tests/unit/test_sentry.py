"""R38: Sentry starts only with a DSN, in every process kind that calls it."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import sentry_sdk

from {{ cookiecutter.package_name }}.observability.sentry import (
    FILTERED,
    MIN_SECRET_LENGTH,
    TASK_HOOKS_LOGGER,
    init_sentry,
    prepare_event,
    secret_values,
    task_context,
)
from {{ cookiecutter.package_name }}.settings import Settings


@pytest.fixture(autouse=True)
def _reset_sentry() -> Iterator[None]:
    yield
    sentry_sdk.init(dsn=None)


@pytest.mark.reliability("R38")
def test_no_dsn_means_no_client() -> None:
    assert init_sentry(Settings(_env_file=None, sentry_dsn=""), "api") is False
    assert not sentry_sdk.get_client().is_active()


@pytest.mark.reliability("R38")
def test_a_dsn_starts_the_client_with_the_celery_integration() -> None:
    settings = Settings(_env_file=None, sentry_dsn="http://key@127.0.0.1:9/1")
    assert init_sentry(settings, "worker") is True
    client = sentry_sdk.get_client()
    assert client.is_active()
    assert "celery" in client.integrations


@pytest.mark.reliability("R38")
def test_secret_values_cover_secret_settings_and_passwords_inside_urls() -> None:
    settings = Settings(
        _env_file=None,
        database_url="postgresql+psycopg://app:p%40ss-word-1@db:5432/app",
        redis_password="redis-secret-1",
        sentry_dsn="http://key@127.0.0.1:9/1",
    )
    found = secret_values(settings)
    assert {"p%40ss-word-1", "p@ss-word-1", "redis-secret-1", "http://key@127.0.0.1:9/1"} <= found
    assert all(len(value) >= MIN_SECRET_LENGTH for value in found)


@pytest.mark.reliability("R38")
def test_prepare_event_masks_sensitive_names_and_secret_values_at_any_depth() -> None:
    event = {
        "message": "connect failed: host=db password=hunter22 user=app",
        "request": {
            "headers": {"X-API-Key": "tsk_abc", "Accept": "*/*"},
            "data": {"name": "demo.echo", "kwargs": {"api_token": "t0k", "message": "hi"}},
        },
        "extra": {
            "scope_headers": [["b'authorization'", "b'Bearer xyz'"], ["b'host'", "b'api'"]],
            "repr": "{'reason': 'visible', 'api_token': 'abc123'}",
            "nested": ["url postgresql://app:redis-secret-1@db/app"],
        },
    }

    prepared = prepare_event(event, {"redis-secret-1"}, {"request_id": "r-1"})

    assert prepared["tags"] == {"request_id": "r-1"}
    assert prepared["message"] == "connect failed: host=db password=[Filtered] user=app"
    assert prepared["request"]["headers"] == {"X-API-Key": FILTERED, "Accept": "*/*"}
    assert prepared["request"]["data"]["kwargs"] == {"api_token": FILTERED, "message": "hi"}
    assert prepared["extra"]["scope_headers"] == [
        ["b'authorization'", FILTERED],
        ["b'host'", "b'api'"],
    ]
    assert prepared["extra"]["repr"] == "{'reason': 'visible', 'api_token': '[Filtered]'}"
    assert prepared["extra"]["nested"] == [f"url postgresql://app:{FILTERED}@db/app"]


def test_prepare_event_leaves_ordinary_text_alone() -> None:
    event = {"message": "the password check passed", "tags": {"component": "api"}}
    assert prepare_event(event, set(), {}) == event


@pytest.mark.reliability("R38")
def test_task_context_names_the_run() -> None:
    request = SimpleNamespace(
        id="t-1",
        retries=2,
        delivery_info={"routing_key": "high", "exchange": ""},
        request_id="r-9",
    )
    assert task_context(request, "demo.fail") == {
        "task_id": "t-1",
        "task_name": "demo.fail",
        "queue": "high",
        "attempt": "3",
        "request_id": "r-9",
    }
    assert task_context(SimpleNamespace(id="t-2", retries=None), "demo.echo") == {
        "task_id": "t-2",
        "task_name": "demo.echo",
        "attempt": "1",
    }
    assert task_context(None, None) == {}
    assert task_context(SimpleNamespace(id=None), "demo.echo") == {}


def test_the_failure_hooks_log_line_is_not_a_second_event() -> None:
    """The Celery integration reports a task's exception; ReliableTask.on_failure's log
    line of it is dropped, other error logs are kept."""
    settings = Settings(_env_file=None, sentry_dsn="http://key@127.0.0.1:9/1")
    init_sentry(settings, "worker")
    before_send = sentry_sdk.get_client().options["before_send"]
    assert before_send({"logger": TASK_HOOKS_LOGGER, "message": "task failed"}, {}) is None
    kept = before_send({"logger": "other", "message": "boom"}, {})
    assert kept is not None
    assert kept["message"] == "boom"
