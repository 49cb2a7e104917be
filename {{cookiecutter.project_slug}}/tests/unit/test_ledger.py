"""The ledger's rules, on a real SQLite file (the integration tier repeats them on servers)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy import create_engine, event, func, inspect, select

from {{ cookiecutter.package_name }} import sent_events as sent_events_module
from {{ cookiecutter.package_name }}.ledger.beat import acquire_lease, install_defaults
from {{ cookiecutter.package_name }}.ledger.db import open_engines, session_scope
from {{ cookiecutter.package_name }}.ledger.deadletters import NotReplayable, list_dead, replay
from {{ cookiecutter.package_name }}.ledger.migrate import alembic_config
from {{ cookiecutter.package_name }}.ledger.models import (
    DemoEffect,
    PeriodicTask,
    TaskRecord,
    TaskState,
    utcnow,
)
from {{ cookiecutter.package_name }}.ledger.publish import REDISPATCH_HEADER, enqueue, submit
from {{ cookiecutter.package_name }}.ledger.reconcile import prune, reconcile
from {{ cookiecutter.package_name }}.ledger.tracking import mark
from {{ cookiecutter.package_name }}.schedule import PeriodicSpec
from {{ cookiecutter.package_name }}.sent_events import sent_events
from {{ cookiecutter.package_name }}.settings import get_settings
from {{ cookiecutter.package_name }}.tasks import demo

SETTINGS = get_settings()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every message the code hands to the broker (the in-memory one), in order."""
    messages: list[dict[str, Any]] = []
    original = Celery.send_task

    def spy(self: Celery, name: str, *args: Any, **kwargs: Any) -> Any:
        messages.append({"name": name, **kwargs})
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(Celery, "send_task", spy)
    return messages


def add_row(state: TaskState, age: timedelta, **values: Any) -> str:
    with session_scope() as session:
        record = enqueue(session, demo.echo.app, "demo.echo", {"message": "x"})
        session.info.clear()  # written directly: not published
        record.state = state
        record.updated_at = utcnow() - age
        for key, value in values.items():
            setattr(record, key, value)
        return record.id


def state_of(task_id: str) -> str:
    with session_scope() as session:
        record = session.get(TaskRecord, task_id)
        assert record is not None
        return record.state


def effects(task_id: str) -> int:
    with session_scope() as session:
        count = session.scalar(select(func.count()).where(DemoEffect.task_id == task_id))
        return int(count or 0)


@pytest.mark.reliability("R33")
def test_enqueue_publishes_after_commit_and_not_after_rollback(
    celery_app: Celery, sent: list[dict[str, Any]]
) -> None:
    with session_scope() as session:
        record = enqueue(session, celery_app, "demo.echo", {"message": "kept"})
        assert sent == []  # nothing leaves before the commit
    assert [message["task_id"] for message in sent] == [record.id]
    assert state_of(record.id) == TaskState.PUBLISHED

    def failing_transaction() -> str:
        with session_scope() as session:
            dropped = enqueue(session, celery_app, "demo.echo", {"message": "dropped"})
            session.add(DemoEffect(task_id=dropped.id, key="business row"))
            failed.append(dropped.id)
            raise RuntimeError("the caller's transaction fails")

    failed: list[str] = []
    with pytest.raises(RuntimeError):
        failing_transaction()
    dropped_id = failed[0]
    assert len(sent) == 1
    with session_scope() as session:
        assert session.get(TaskRecord, dropped_id) is None
    assert effects(dropped_id) == 0


@pytest.mark.reliability("R33")
def test_a_publish_happens_with_no_ledger_connection_checked_out(
    celery_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither path holds a connection while it waits on the broker, nor takes a second."""
    in_use: list[int] = []
    original = Celery.send_task

    def counting(self: Celery, name: str, *args: Any, **kwargs: Any) -> Any:
        in_use.append(sum(engine.pool.checkedout() for engine in open_engines()))  # type: ignore[attr-defined]
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(Celery, "send_task", counting)
    with session_scope() as session:
        in_transaction = enqueue(session, celery_app, "demo.echo", {"message": "enqueued"})
    alone = submit(celery_app, "demo.echo", {"message": "submitted"})
    assert in_use == [0, 0]
    assert state_of(in_transaction.id) == state_of(alone.id) == TaskState.PUBLISHED
    assert alone.state == TaskState.PUBLISHED


@pytest.mark.reliability("R26")
def test_task_sent_events_leave_in_one_batch(
    celery_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five submissions: five task messages at once, their events in one later publish."""
    dispatcher = sent_events(celery_app)
    dispatcher.flush_batch()  # what earlier tests left
    published: list[tuple[str, list[dict[str, Any]]]] = []
    monkeypatch.setattr(
        dispatcher,
        "_publish",
        lambda events, producer, routing_key, **options: published.append(
            (routing_key, list(events))
        ),
    )
    monkeypatch.setattr(sent_events_module, "FLUSH_INTERVAL", 3600)  # flushed by hand below
    ids = [submit(celery_app, "demo.echo", {"message": str(n)}).id for n in range(5)]
    assert {state_of(task_id) for task_id in ids} == {TaskState.PUBLISHED}
    assert published == []
    dispatcher.flush_batch()
    assert [(key, [event["uuid"] for event in events]) for key, events in published] == [
        ("task.multi", ids)
    ]
    assert {event["type"] for event in published[0][1]} == {"task-sent"}


@pytest.mark.reliability("R21", "R34")
def test_only_a_row_sent_before_is_sent_again_with_the_redispatch_mark(
    celery_app: Celery, sent: list[dict[str, Any]]
) -> None:
    """The worker looks a delivery up in the ledger only when it may be a copy."""
    stale = timedelta(seconds=SETTINGS.reconcile_started_after + 60)
    never_sent = add_row(TaskState.QUEUED, stale)
    sent_before = add_row(TaskState.STARTED, stale, attempts=1, dispatches=1)
    fresh = submit(celery_app, "demo.echo", {"message": "first send"})
    reconcile(celery_app, SETTINGS)
    headers = {m["task_id"]: m.get("headers") or {} for m in sent}
    assert headers[sent_before].get(REDISPATCH_HEADER) is True
    assert REDISPATCH_HEADER not in headers[never_sent]
    assert REDISPATCH_HEADER not in headers[fresh.id]


@pytest.mark.reliability("R21", "R33")
def test_a_finished_task_is_never_run_again(eager: Celery) -> None:
    task_id = add_row(TaskState.PUBLISHED, timedelta(0))
    demo.record_effect.apply(kwargs={"key": "once"}, task_id=task_id)
    assert state_of(task_id) == TaskState.SUCCEEDED
    assert effects(task_id) == 1
    again: str = demo.record_effect.apply(kwargs={"key": "once"}, task_id=task_id).state
    assert again == "IGNORED"
    assert effects(task_id) == 1
    with session_scope() as session:
        record = session.get(TaskRecord, task_id)
        assert record is not None
        assert record.attempts == 1
        assert record.started_at is not None
        assert record.finished_at is not None


@pytest.mark.reliability("R21")
def test_of_two_concurrent_copies_only_the_first_to_commit_keeps_its_effect(
    eager: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = add_row(TaskState.PUBLISHED, timedelta(0))

    def other_copy_commits_meanwhile(_: float) -> None:
        with session_scope() as session:
            session.add(DemoEffect(task_id=task_id, key="first copy"))
            assert mark(session, task_id, TaskState.SUCCEEDED)

    monkeypatch.setattr("time.sleep", other_copy_commits_meanwhile)
    second: str = demo.record_effect.apply(kwargs={"key": "second copy"}, task_id=task_id).state
    assert second == "IGNORED"
    assert effects(task_id) == 1
    assert state_of(task_id) == TaskState.SUCCEEDED


@pytest.mark.reliability("R14", "R33")
def test_a_task_past_the_attempt_limit_goes_dead(eager: Celery, sent: list[dict[str, Any]]) -> None:
    task_id = add_row(TaskState.STARTED, timedelta(0), attempts=SETTINGS.ledger_max_attempts)
    demo.record_effect.apply(kwargs={"key": "poison"}, task_id=task_id)
    assert state_of(task_id) == TaskState.DEAD
    assert effects(task_id) == 0
    assert [m["queue"] for m in sent if m.get("task_id") == task_id] == ["dead"]


@pytest.mark.reliability("R14")
def test_dead_letters_are_listed_and_replayed_as_a_fresh_attempt(
    celery_app: Celery, sent: list[dict[str, Any]]
) -> None:
    dead = add_row(TaskState.DEAD, timedelta(0), finished_at=utcnow(), last_error="boom")
    with session_scope() as session:
        assert dead in [row.id for row in list_dead(session, limit=500)]
    with session_scope() as session:
        fresh = replay(session, celery_app, dead)
    assert fresh.id != dead
    assert fresh.replay_of == dead
    assert state_of(fresh.id) == TaskState.PUBLISHED
    assert state_of(dead) == TaskState.DEAD  # history kept
    with pytest.raises(NotReplayable), session_scope() as session:
        replay(session, celery_app, fresh.id)


@pytest.mark.reliability("R34")
def test_reconcile_redispatches_stalled_rows_once_and_buries_exhausted_ones(
    celery_app: Celery, sent: list[dict[str, Any]]
) -> None:
    long_ago = timedelta(seconds=SETTINGS.reconcile_started_after + 60)
    fresh = timedelta(seconds=1)
    lost_publish = add_row(TaskState.QUEUED, timedelta(seconds=SETTINGS.reconcile_queued_after + 5))
    lost_in_failover = add_row(TaskState.PUBLISHED, long_ago)
    dead_worker = add_row(TaskState.STARTED, long_ago, attempts=1)
    exhausted = add_row(TaskState.STARTED, long_ago, attempts=SETTINGS.ledger_max_attempts)
    still_fine = add_row(TaskState.PUBLISHED, fresh)
    waiting = add_row(TaskState.PUBLISHED, long_ago, eta=utcnow() + timedelta(minutes=5))
    finished = add_row(TaskState.SUCCEEDED, long_ago)

    report = reconcile(celery_app, SETTINGS)

    lost = {lost_publish, lost_in_failover, dead_worker}
    assert set(report.redispatched) >= lost
    assert exhausted in report.dead
    for untouched in (still_fine, waiting, finished):
        assert untouched not in report.redispatched + report.dead
    for task_id in lost:
        assert state_of(task_id) == TaskState.PUBLISHED
    assert state_of(exhausted) == TaskState.DEAD
    assert {m["queue"] for m in sent if m.get("task_id") == exhausted} == {"dead"}
    # A second run right after finds nothing left to do: no double dispatch.
    again = reconcile(celery_app, SETTINGS)
    assert not set(again.redispatched) & lost


@pytest.mark.reliability("R34")
def test_a_retry_due_for_as_long_as_a_published_message_may_wait_is_sent_again(
    celery_app: Celery,
) -> None:
    """Its message was lost (a failover, a worker holding it died): well before the
    visibility timeout would bring a held copy back."""
    settings = SETTINGS.model_copy(update={"reconcile_published_after": 60})
    assert settings.reconcile_retry_after < settings.visibility_timeout
    due = utcnow() - timedelta(seconds=30)
    lost_age = timedelta(seconds=settings.reconcile_retry_after + 5)
    lost_retry = add_row(TaskState.RETRY, lost_age, eta=due)
    recent_retry = add_row(TaskState.RETRY, timedelta(seconds=30), eta=due)

    redispatched = reconcile(celery_app, settings).redispatched

    assert lost_retry in redispatched
    assert recent_retry not in redispatched
    assert state_of(lost_retry) == TaskState.PUBLISHED


@pytest.mark.reliability("R34")
def test_a_reconcile_pass_takes_as_many_statements_for_fifty_rows_as_for_one(
    celery_app: Celery,
) -> None:
    """The claim and the PUBLISHED mark are one statement each, whatever the batch."""
    stale = timedelta(seconds=SETTINGS.reconcile_started_after + 60)
    reconcile(celery_app, SETTINGS)  # what earlier tests left behind
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    def statements_of_a_pass(rows: int) -> int:
        ids = {add_row(TaskState.STARTED, stale, attempts=1) for _ in range(rows)}
        statements.clear()
        assert set(reconcile(celery_app, SETTINGS).redispatched) == ids
        taken = len(statements)
        assert {state_of(task_id) for task_id in ids} == {TaskState.PUBLISHED}
        return taken

    engines = open_engines()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        one, fifty = statements_of_a_pass(1), statements_of_a_pass(50)
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)
    assert one == fifty, statements


@pytest.mark.reliability("R34")
def test_reconcile_stops_sending_at_the_first_broker_failure(
    celery_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the broker down, one publish waits out the retry policy, not one per row."""
    stale = timedelta(seconds=SETTINGS.reconcile_started_after + 60)
    reconcile(celery_app, SETTINGS)  # what earlier tests left behind
    ids = {add_row(TaskState.STARTED, stale, attempts=1) for _ in range(3)}
    attempts: list[str] = []

    def broker_down(self: Celery, name: str, *args: Any, **kwargs: Any) -> Any:
        attempts.append(kwargs["task_id"])
        raise OperationalError("broker down")

    monkeypatch.setattr(Celery, "send_task", broker_down)
    report = reconcile(celery_app, SETTINGS)
    assert report.redispatched == []
    assert len(attempts) == 1
    # Claimed and left QUEUED: the next pass sends them once the broker is back.
    assert {state_of(task_id) for task_id in ids} == {TaskState.QUEUED}


def test_prune_deletes_only_old_finished_rows() -> None:
    old = timedelta(days=SETTINGS.ledger_retention_days + 1)
    old_done = add_row(TaskState.SUCCEEDED, old, finished_at=utcnow() - old)
    new_done = add_row(TaskState.SUCCEEDED, timedelta(0), finished_at=utcnow())
    old_open = add_row(TaskState.PUBLISHED, old)
    assert prune(SETTINGS) >= 1
    with session_scope() as session:
        assert session.get(TaskRecord, old_done) is None
        assert session.get(TaskRecord, new_done) is not None
        assert session.get(TaskRecord, old_open) is not None


@pytest.mark.reliability("R29")
def test_one_beat_holds_the_lease_until_it_expires() -> None:
    now = utcnow()
    assert acquire_lease("beat-a", 30, now)
    assert not acquire_lease("beat-b", 30, now)
    assert acquire_lease("beat-a", 30, now + timedelta(seconds=10))
    assert not acquire_lease("beat-b", 30, now + timedelta(seconds=20))
    assert acquire_lease("beat-b", 30, now + timedelta(seconds=41))
    assert not acquire_lease("beat-a", 30, now + timedelta(seconds=42))


@pytest.mark.reliability("R30")
def test_default_entries_never_overwrite_edited_rows() -> None:
    install_defaults([PeriodicSpec("edited", "demo.echo", 60, kwargs={"message": "a"})])
    with session_scope() as session:
        row = session.get(PeriodicTask, "edited")
        assert row is not None
        row.interval_seconds = 5
    install_defaults([PeriodicSpec("edited", "demo.echo", 60, kwargs={"message": "a"})])
    with session_scope() as session:
        row = session.get(PeriodicTask, "edited")
        assert row is not None
        assert row.interval_seconds == 5


@pytest.mark.reliability("R33")
def test_migrations_go_up_and_down(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/scratch.db")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        tables = set(inspect(connection).get_table_names())
        assert {"task_ledger", "demo_effects", "periodic_tasks", "beat_lease"} <= tables
        command.downgrade(config, "base")
        assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
