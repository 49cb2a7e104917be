"""JSON logs with task context (R39), postrun records (R40), revocations logged (R41)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, signals

from {{ cookiecutter.package_name }}.observability.logging import configure_logging
from {{ cookiecutter.package_name }}.observability.redact import redact
from {{ cookiecutter.package_name }}.settings import get_settings
from {{ cookiecutter.package_name }}.tasks import demo


@pytest.fixture
def json_lines() -> Iterator[Any]:
    """The service's JSON logging, writing to a buffer; yields a reader of the parsed lines."""
    configure_logging(get_settings(), "worker")
    (handler,) = logging.getLogger().handlers
    buffer = io.StringIO()
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in buffer.getvalue().splitlines() if line]

    yield read
    logging.basicConfig(handlers=[logging.NullHandler()], force=True)


@pytest.mark.reliability("R39", "R40")
def test_task_logs_are_json_with_task_id_duration_and_redacted_result(
    eager: Celery, json_lines: Any
) -> None:
    demo.echo.apply(kwargs={"message": "hello"}, task_id="log-probe")
    lines = json_lines()
    finished = [line for line in lines if line.get("event") == "task_finished"]
    assert finished, lines
    record = finished[-1]
    assert record["task_id"] == "log-probe"
    assert record["task_name"] == "demo.echo"
    assert record["state"] == "SUCCESS"
    assert record["duration_seconds"] >= 0
    assert record["return_value"] == "'hello'"
    assert {"timestamp", "level", "logger", "service", "component"} <= set(record)


@pytest.mark.reliability("R41")
def test_revoked_tasks_are_logged(json_lines: Any, celery_app: Celery) -> None:
    request = SimpleNamespace(id="revoked-probe", task_name="demo.sleep")
    signals.task_revoked.send(
        sender=celery_app.tasks["demo.sleep"],
        request=request,
        terminated=False,
        signum=None,
        expired=False,
    )
    revoked = [line for line in json_lines() if line.get("event") == "task_revoked"]
    assert revoked
    assert revoked[-1]["task_id"] == "revoked-probe"
    assert revoked[-1]["task_name"] == "demo.sleep"


@pytest.mark.reliability("R40")
def test_redact_masks_secrets_and_bounds_size() -> None:
    rendered = redact({"user": "ann", "password": "hunter2", "nested": [{"api_key": "k"}]})
    assert "hunter2" not in rendered
    assert "'k'" not in rendered
    assert "ann" in rendered
    assert len(redact("x" * 10_000)) <= 200
