"""Worker liveness on a real SQLite ledger: heartbeats, the claim guard, the orphan sweep.

Every judgement runs on the database's clock: the tests set ages with `database_now`,
and one moves this process's clock an hour ahead to show nothing depends on it.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
import redis.exceptions
from billiard.einfo import ExceptionInfo
from billiard.exceptions import Terminated
from celery import Celery
from celery.contrib.testing.mocks import TaskMessage
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import OperationalError

from {{ cookiecutter.package_name }} import worker_liveness
from {{ cookiecutter.package_name }}.ledger import heartbeats
from {{ cookiecutter.package_name }}.ledger import reconcile as reconcile_module
from {{ cookiecutter.package_name }}.ledger.clock import database_now
from {{ cookiecutter.package_name }}.ledger.db import session_scope, single_statement
from {{ cookiecutter.package_name }}.ledger.models import (
    Recovery,
    RecoveryCount,
    TaskRecord,
    TaskState,
    WorkerHeartbeat,
    utcnow,
)
from {{ cookiecutter.package_name }}.ledger.publish import new_row
from {{ cookiecutter.package_name }}.ledger.reconcile import rescue_orphans
from {{ cookiecutter.package_name }}.ledger.statements import HEARTBEATS, LEDGER
from {{ cookiecutter.package_name }}.ledger.tracking import Claim, claim, record_retry, release, requeue
from {{ cookiecutter.package_name }}.settings import Settings, get_settings
from {{ cookiecutter.package_name }}.tasks import demo
from {{ cookiecutter.package_name }}.tasks.base import RETRY_OF_HEADER
from {{ cookiecutter.package_name }}.tasks.request import LedgerRequest

SETTINGS = get_settings()
DEAD = SETTINGS.worker_dead_after + 5  # seconds since a dead worker's last heartbeat
pytestmark = pytest.mark.reliability("R46")


@pytest.fixture(autouse=True)
def no_other_claims() -> None:
    """Each test sees only its own processes, and only its own rows as claimed."""
    with single_statement() as connection:
        connection.execute(delete(HEARTBEATS))
        connection.execute(update(LEDGER).values(incarnation=None))


def a_worker(seen_ago: float, hostname: str = "default@elsewhere") -> str:
    """A heartbeat row of another process, last written `seen_ago` seconds ago."""
    incarnation = uuid.uuid4().hex
    with single_statement() as connection:
        connection.execute(
            insert(HEARTBEATS).values(
                incarnation=incarnation,
                hostname=hostname,
                queues="default",
                started_at=database_now(-seen_ago - 60),
                last_seen=database_now(-seen_ago),
            )
        )
    return incarnation


def a_task(state: TaskState, owner: str | None, started_ago: float = 1, **values: Any) -> str:
    row = new_row(demo.echo.app, "demo.echo", {"message": "x"})
    row.update({"attempts": 1, "dispatches": 1, **values}, state=state, incarnation=owner)
    with single_statement() as connection:
        connection.execute(insert(LEDGER).values(row))
        connection.execute(
            update(LEDGER)
            .where(LEDGER.c.id == row["id"])
            .values(started_at=database_now(-started_ago))
        )
    return str(row["id"])


def row_of(task_id: str) -> TaskRecord:
    with session_scope() as session:
        record = session.get(TaskRecord, task_id)
        assert record is not None
        return record


def recoveries() -> dict[str, int]:
    with session_scope() as session:
        return dict(session.execute(select(RecoveryCount.cause, RecoveryCount.count)).all())


def test_the_database_clock_has_the_format_the_ledger_stores_and_compares() -> None:
    task_id = a_task(TaskState.STARTED, None, started_ago=30)
    with single_statement() as connection:
        later = connection.scalar(
            select(LEDGER.c.id).where(
                LEDGER.c.id == task_id, LEDGER.c.started_at < database_now(-29)
            )
        )
        earlier = connection.scalar(
            select(LEDGER.c.id).where(
                LEDGER.c.id == task_id, LEDGER.c.started_at < database_now(-31)
            )
        )
    started = row_of(task_id).started_at
    assert started is not None
    # Read back as a datetime with microseconds, 30 s before this machine's now.
    assert abs((utcnow() - started) - timedelta(seconds=30)) < timedelta(seconds=2)
    assert (later, earlier) == (task_id, None)


def test_the_sweep_resends_only_the_rows_of_dead_processes_whatever_this_clock_says(
    celery_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine's clock an hour ahead: a sweep on it would find every worker dead.
    ahead = utcnow() + timedelta(hours=1)
    monkeypatch.setattr(reconcile_module, "utcnow", lambda: ahead)
    alive, dead = a_worker(seen_ago=1), a_worker(seen_ago=DEAD)
    running = a_task(TaskState.STARTED, alive)
    lost = a_task(TaskState.STARTED, dead)
    unowned = a_task(TaskState.STARTED, None)  # claimed before liveness: the VT rule's
    finished = a_task(TaskState.SUCCEEDED, dead)
    before = recoveries()

    report = rescue_orphans(celery_app, SETTINGS)

    assert report.redispatched == [lost]
    assert report.causes == {Recovery.WORKER_LOST: 1}
    assert row_of(lost).state == TaskState.PUBLISHED
    assert row_of(lost).incarnation is None
    assert row_of(lost).dispatches == 2
    assert [row_of(t).state for t in (running, unowned, finished)] == [
        TaskState.STARTED,
        TaskState.STARTED,
        TaskState.SUCCEEDED,
    ]
    assert recoveries()["worker_lost"] == before["worker_lost"] + 1
    # A second pass finds nothing: the row is no longer claimed by the dead process.
    assert rescue_orphans(celery_app, SETTINGS).redispatched == []


def test_a_retry_of_a_dead_process_waits_for_its_due_time(celery_app: Celery) -> None:
    dead = a_worker(seen_ago=DEAD)
    due = a_task(TaskState.RETRY, dead, eta=utcnow() - timedelta(seconds=5))
    waiting = a_task(TaskState.RETRY, dead, eta=utcnow() + timedelta(minutes=5))

    report = rescue_orphans(celery_app, SETTINGS)

    assert report.redispatched == [due]
    assert row_of(waiting).state == TaskState.RETRY


def test_a_retry_scheduled_without_a_claim_belongs_to_the_process_that_scheduled_it(
    celery_app: Celery,
) -> None:
    """The ledger failed the claim, then took the RETRY mark: should the retry message die
    with that process (held in its memory until due), the sweep sends the task again."""
    unclaimed = a_task(TaskState.PUBLISHED, None, attempts=0)
    claimed = a_task(TaskState.STARTED, a_worker(seen_ago=1))
    for task_id in (unclaimed, claimed):
        record_retry(task_id, "OperationalError: the ledger restarted", delay=0)

    assert row_of(unclaimed).incarnation == heartbeats.INCARNATION
    assert row_of(claimed).incarnation != heartbeats.INCARNATION, "the run's claim stays"
    # This process never beat here: to the sweep it is dead, the other worker alive.
    assert rescue_orphans(celery_app, SETTINGS).redispatched == [unclaimed]


def test_a_sweep_past_the_attempt_limit_buries_the_row(celery_app: Celery) -> None:
    dead = a_worker(seen_ago=DEAD)
    poison = a_task(TaskState.STARTED, dead, attempts=SETTINGS.ledger_max_attempts)

    report = rescue_orphans(celery_app, SETTINGS)

    assert report.dead == [poison]
    assert row_of(poison).state == TaskState.DEAD


def test_a_restarted_worker_resends_its_predecessors_tasks_at_once(celery_app: Celery) -> None:
    # Seen a second ago: by its heartbeat alone, the old process would count as alive.
    predecessor = a_worker(seen_ago=1, hostname="default@pod-1")
    neighbour = a_worker(seen_ago=1, hostname="default@pod-2")
    its_task = a_task(TaskState.STARTED, predecessor)
    neighbours_task = a_task(TaskState.STARTED, neighbour)
    heartbeats.beat("default@pod-1", ["default"])

    superseded = heartbeats.supersede("default@pod-1")
    report = rescue_orphans(celery_app, SETTINGS, superseded)

    assert superseded == [predecessor]
    assert report.redispatched == [its_task]
    assert report.causes == {Recovery.WORKER_RESTARTED: 1}
    assert row_of(neighbours_task).state == TaskState.STARTED
    with single_statement() as connection:
        names = set(connection.scalars(select(HEARTBEATS.c.incarnation)))
    assert names == {neighbour, heartbeats.INCARNATION}


def test_a_copy_is_held_while_a_live_process_runs_the_task() -> None:
    """The claim guard: of the message and its copies, one run at a time."""
    alive, dead = a_worker(seen_ago=1), a_worker(seen_ago=DEAD)
    held = a_task(TaskState.STARTED, alive)
    orphan = a_task(TaskState.STARTED, dead)
    # Past the hard time limit the run has been killed, whatever the heartbeat says.
    overdue = a_task(TaskState.STARTED, alive, started_ago=SETTINGS.task_time_limit + 5)
    unowned = a_task(TaskState.STARTED, None)

    assert claim(held, "default@here") == (Claim.HELD, 1)
    assert row_of(held).incarnation == alive
    for task_id in (orphan, overdue, unowned):
        assert claim(task_id, "default@here") == (Claim.RUN, 2), task_id
        assert row_of(task_id).incarnation == heartbeats.INCARNATION


def test_the_retry_a_live_run_sent_may_claim_the_row_that_run_still_holds() -> None:
    """The ledger was down when the run retried: the row says STARTED by a live process."""
    heartbeats.beat("default@here", ["default"])
    task_id = a_task(TaskState.PUBLISHED, None)
    assert claim(task_id, "default@here") == (Claim.RUN, 2)
    assert claim(task_id, "default@here", retry_of=1) == (Claim.HELD, 2), "not that run's"
    assert claim(task_id, "default@here", retry_of=2) == (Claim.RUN, 3)


def test_a_released_claim_lets_the_requeued_message_run() -> None:
    """A pool process died (R02): the worker lives, so its claim must be freed by hand."""
    heartbeats.beat("default@here", ["default"])
    task_id = a_task(TaskState.PUBLISHED, None)
    assert claim(task_id, "default@here") == (Claim.RUN, 2)
    assert claim(task_id, "default@here") == (Claim.HELD, 2)
    release(task_id)
    assert claim(task_id, "default@here") == (Claim.RUN, 3)


def test_a_run_cancelled_on_a_connection_loss_is_published_again_and_free() -> None:
    """Celery cancelled it (the broker connection dropped): a returning copy claims it, and
    if none comes, the reconcile job's rule for PUBLISHED rows sends it again."""
    heartbeats.beat("default@here", ["default"])
    task_id = a_task(TaskState.PUBLISHED, None)
    assert claim(task_id, "default@here") == (Claim.RUN, 2)
    requeue(task_id)
    record = row_of(task_id)
    assert (record.state, record.incarnation) == (TaskState.PUBLISHED, None)
    assert claim(task_id, "default@here") == (Claim.RUN, 3)


def a_delivery(task_id: str, acks: list[str]) -> LedgerRequest:
    """demo.echo's message as the worker's main process holds it; an ack is recorded."""
    message = TaskMessage("demo.echo", id=task_id, kwargs={"message": "x"})
    return LedgerRequest(
        message, app=demo.echo.app, task=demo.echo, on_ack=lambda *_: acks.append(task_id)
    )


def the_child_reports_terminated(request: LedgerRequest) -> None:
    """What billiard hands the request when the pool job it cancelled ends."""
    try:
        raise Terminated(-signal.SIGTERM)
    except Terminated:
        request.on_failure(ExceptionInfo())


@pytest.mark.parametrize("started", [True, False], ids=["running", "not-yet-started"])
def test_a_run_cancelled_on_a_connection_loss_keeps_its_message_while_redis_refuses_writes(
    started: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops while the new master refuses writes (NOREPLICAS): the kill of
    the run must not read as a revoke, which would ack the message and end the row REVOKED."""
    heartbeats.beat("default@here", ["default"])
    task_id = a_task(TaskState.PUBLISHED, None)
    acks: list[str] = []
    request = a_delivery(task_id, acks)
    if started:
        assert claim(task_id, "default@here") == (Claim.RUN, 2)
        # A pool child took it (celery-types calls the pid a str).
        request.on_accepted(pid=4242, time_accepted=time.monotonic())  # type: ignore[arg-type]
    refused = redis.exceptions.ResponseError("NOREPLICAS Not enough good replicas to write.")
    monkeypatch.setattr(demo.echo.backend, "mark_as_retry", mock.Mock(side_effect=refused))
    revoked = mock.Mock()
    monkeypatch.setattr(demo.echo.backend, "mark_as_revoked", revoked)
    pool = mock.Mock()
    # As the consumer does on a connection loss (it logs what cancel() raises, and goes on).
    with contextlib.suppress(redis.exceptions.ResponseError):
        request.cancel(pool)
    the_child_reports_terminated(request)
    assert acks == [], "the message must stay unacked, for its redelivery"
    assert not revoked.called
    record = row_of(task_id)
    assert (record.state, record.incarnation) == (TaskState.PUBLISHED, None)
    killed = [mock.call(4242, signal.SIGTERM)] if started else []
    assert pool.terminate_job.call_args_list == killed


def test_a_retry_is_recorded_before_its_message_is_sent(
    celery_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = a_task(TaskState.STARTED, heartbeats.INCARNATION)
    seen: list[tuple[str, Any]] = []
    headers: list[dict[str, Any]] = []
    original = Celery.send_task

    def spy(self: Celery, name: str, *args: Any, **kwargs: Any) -> Any:
        record = row_of(task_id)
        seen.append((record.state, record.eta))
        headers.append(kwargs.get("headers") or {})
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(Celery, "send_task", spy)
    demo.echo.push_request(
        id=task_id,
        args=[],
        kwargs={"message": "x"},
        retries=0,
        called_directly=False,
        ledger_attempt=3,
    )
    try:
        demo.echo.retry(exc=ConnectionError("flaky"), countdown=30, throw=False)
    finally:
        demo.echo.pop_request()

    assert len(seen) == 1
    state, eta = seen[0]
    assert state == TaskState.RETRY
    assert eta is not None
    assert timedelta(seconds=25) < eta - utcnow() < timedelta(seconds=35)
    assert row_of(task_id).last_error == "ConnectionError: flaky"
    # Names the attempt that sent it, should the RETRY mark not have been written.
    assert headers[0][RETRY_OF_HEADER] == 3


def test_live_workers_per_queue_and_recoveries_are_metrics(client: TestClient) -> None:
    a_worker(seen_ago=1)
    a_worker(seen_ago=DEAD)
    metrics = client.get("/metrics").text
    assert 'ledger_live_workers{queue="default"} 1.0' in metrics
    assert 'ledger_live_workers{queue="low"} 0.0' in metrics
    assert 'ledger_recoveries_total{cause="worker_lost"}' in metrics


def test_heartbeats_of_long_dead_processes_are_pruned() -> None:
    recent = a_worker(seen_ago=DEAD)
    old = a_worker(seen_ago=heartbeats.RETENTION_SECONDS + 60)
    assert heartbeats.prune() == 1
    with single_statement() as connection:
        left = set(connection.scalars(select(WorkerHeartbeat.incarnation)))
    assert recent in left
    assert old not in left


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_judges_others_only_after_beating_for_the_dead_after_window(
    celery_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back from a database outage, a worker first lets the others beat again."""
    clock = Clock()
    monkeypatch.setattr("time.monotonic", clock)
    sweeps: list[int] = []
    monkeypatch.setattr(worker_liveness, "rescue_orphans", lambda *a: sweeps.append(1))
    liveness = worker_liveness.Liveness(celery_app, "default@here", ["default"], SETTINGS)

    liveness.beat()
    clock.now += SETTINGS.worker_dead_after - 1
    liveness.sweep()
    assert sweeps == []
    clock.now += 2
    liveness.sweep()
    assert sweeps == [1]

    def down(*_: Any) -> None:
        raise OperationalError("UPDATE worker_heartbeats", {}, Exception("database down"))

    monkeypatch.setattr(heartbeats, "beat", down)
    liveness.beat()
    liveness.sweep()
    assert sweeps == [1], "no judgement while its own heartbeats fail"


def test_a_worker_refuses_a_node_name_a_live_worker_answers_to(
    celery_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    exits: list[int] = []
    monkeypatch.setattr("os._exit", exits.append)
    answers = {"default@here": [{"default@here": {"ok": "pong"}}], "default@new": []}
    monkeypatch.setattr(
        celery_app.control, "ping", lambda destination, timeout, connection: answers[destination[0]]
    )
    worker_liveness.Liveness(celery_app, "default@new", ["default"], SETTINGS).refuse_a_taken_name()
    assert exits == []
    worker_liveness.Liveness(
        celery_app, "default@here", ["default"], SETTINGS
    ).refuse_a_taken_name()
    assert exits == [worker_liveness.EXIT_NAME_TAKEN]


def test_dead_after_must_span_two_heartbeats() -> None:
    with pytest.raises(ValidationError, match="WORKER_DEAD_AFTER"):
        Settings(worker_heartbeat_interval=10, worker_dead_after=15)
