"""Example tasks and the base class, run eagerly with an in-memory result backend."""

from __future__ import annotations

import logging

import pytest
from celery import Celery, states

from {{ cookiecutter.package_name }}.tasks import demo, reports
from {{ cookiecutter.package_name }}.tasks.base import ReliableTask
from {{ cookiecutter.package_name }}.tasks.cancel import request_abort
from {{ cookiecutter.package_name }}.tasks.errors import RetryableError


def test_every_task_of_the_service_is_a_reliable_task(celery_app: Celery) -> None:
    """The app's task class (task_cls) is ReliableTask: no task declares it, none escapes it."""
    ours = {name: task for name, task in celery_app.tasks.items() if not name.startswith("celery.")}
    assert ours
    assert all(isinstance(task, ReliableTask) for task in ours.values()), sorted(ours)


def test_echo_returns_its_input(eager: Celery) -> None:
    assert demo.echo.delay("hello").get() == "hello"


@pytest.mark.reliability("R12")
def test_flaky_succeeds_after_its_automatic_retries(eager: Celery) -> None:
    assert demo.flaky.delay(3).get() == 3


@pytest.mark.reliability("R13")
def test_retry_later_reschedules_itself_explicitly(eager: Celery) -> None:
    assert demo.retry_later.delay(2, 0.0).get() == 2


@pytest.mark.reliability("R12", "R14")
def test_fail_gives_up_after_max_retries(eager: Celery) -> None:
    with pytest.raises(RetryableError):
        demo.fail.delay("boom").get()


@pytest.mark.reliability("R15")
def test_hooks_record_each_transition(eager: Celery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    demo.flaky.delay(1).get()
    events = [getattr(record, "event", None) for record in caplog.records]
    assert "task_retry" in events
    assert "task_succeeded" in events
    with pytest.raises(RetryableError):
        demo.fail.delay("boom").get()
    # Retries ran out: the final failure is a dead letter (R14).
    failed = [record for record in caplog.records if getattr(record, "event", None) == "task_dead"]
    assert failed
    assert "RetryableError: boom" in getattr(failed[-1], "error", "")


@pytest.mark.reliability("R42")
def test_report_fans_out_over_chunks_and_combines(eager: Celery) -> None:
    report = reports.report_chord(10, 3)
    slices = [task.args for task in report.tasks]
    assert slices == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert {task.task for task in report.tasks} == {"demo.reports.sum_chunk"}
    parts = [task.apply().get() for task in report.tasks]
    combined = report.body.clone(args=(parts,)).apply().get()
    assert combined == {"total": sum(n * n for n in range(10)), "chunks": 4}


@pytest.mark.reliability("R23")
def test_sleep_reports_progress(celery_app: Celery) -> None:
    task_id = "progress-probe"
    demo.sleep.apply(kwargs={"seconds": 0.2}, task_id=task_id)
    # The last state before completion was PROGRESS with counters (eager apply stores no SUCCESS).
    meta = celery_app.backend.get_task_meta(task_id)
    assert meta["status"] == "PROGRESS"
    # Two steps of 0.1 s: progress between them, none before the first or after the last.
    assert meta["result"] == {"done": 1, "total": 2}


@pytest.mark.reliability("R24")
def test_sleep_stops_when_aborted(celery_app: Celery) -> None:
    task_id = "abort-probe"
    request_abort(celery_app, task_id)
    result = demo.sleep.apply(kwargs={"seconds": 5}, task_id=task_id)
    state: str = result.state
    assert state == states.IGNORED
    assert celery_app.backend.get_task_meta(task_id)["status"] == states.REVOKED


@pytest.mark.reliability("R25")
def test_fire_and_forget_task_ignores_its_result(
    celery_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    for task in (demo.notify, demo.echo):
        # Run as a worker would: the outcome goes to the result backend unless ignored.
        monkeypatch.setattr(task, "store_eager_result", True)
    demo.notify.apply(args=("hello",), task_id="notify-probe")
    demo.echo.apply(args=("hello",), task_id="echo-probe")
    # Its progress reports are written (PROGRESS), its outcome never is.
    assert celery_app.backend.get_task_meta("notify-probe")["status"] not in states.READY_STATES
    assert celery_app.backend.get_task_meta("echo-probe")["status"] == states.SUCCESS
