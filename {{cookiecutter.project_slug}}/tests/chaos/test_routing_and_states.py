"""Routing, priorities, serialisation, retries, dead letters, states and cancellation on
real workers (R05, R06, R09-R15, R22-R24)."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import datetime
from typing import Any

import pytest

from tests.chaos.conftest import ChaosResults
from tests.harness.api import ApiClient, task_state
from tests.harness.databases import Database
from tests.harness.probes import (
    effect_times,
    effects,
    event_times,
    ledger,
    queue_keys,
    queue_length,
    redis_client,
    restart_and_wait,
    run_python,
    wait_ledger,
    wait_until,
)
from tests.harness.stack import TEST_SETTINGS, Stack, StackOptions

MAX_RETRIES = 3
SETTINGS = {
    "TASK_MAX_RETRIES": str(MAX_RETRIES),
    "API_TASK_ALLOWLIST": (
        "demo.echo,demo.sleep,demo.flaky,demo.fail,demo.record_effect,demo.urgent_ping,"
        "demo.retry_later,demo.reports.build_report"
    ),
}
BACKOFF_FACTOR = 2  # TASK_RETRY_BACKOFF default
BACKOFF_MAX = int(TEST_SETTINGS["TASK_RETRY_BACKOFF_MAX"])
# A worker needs a moment between an ETA coming due and the next attempt's start.
DELAY_SLACK = 1.5
MAX_COUNTDOWN = int(TEST_SETTINGS["VISIBILITY_TIMEOUT"]) - int(TEST_SETTINGS["TASK_TIME_LIMIT"])


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    return StackOptions(env=dict(SETTINGS), beat=False)


def backoff_bound(retry: int) -> float:
    """Celery's cap for retry n with retry_backoff: factor * 2**n, at most the maximum."""
    return float(min(BACKOFF_FACTOR * 2**retry, BACKOFF_MAX))


def retry_delays(stack: Stack, task_id: str) -> list[float]:
    """Seconds from each `task_retry` log record to the next attempt's `task_started`.

    Paired by order, not by time: with a jittered delay of 0 the next attempt can start
    in the other pool process a few milliseconds before on_retry has logged.
    """
    worker = stack.worker("default")
    retries = sorted(event_times(worker, task_id, "task_retry"))
    starts = sorted(event_times(worker, task_id, "task_started"))
    assert len(starts) == len(retries) + 1, (retries, starts)
    pairs = zip(retries, starts[1:], strict=True)
    return [(start - retried).total_seconds() for retried, start in pairs]


@pytest.mark.reliability("R09", "R10")
@pytest.mark.parametrize(
    ("name", "kwargs", "override", "queue"),
    [
        ("demo.echo", {"message": "to default"}, None, "default"),
        ("demo.urgent_ping", {}, None, "high"),  # route by task name
        ("demo.reports.build_report", {"size": 100, "chunk_size": 50}, None, "low"),  # glob
        ("demo.echo", {"message": "overridden"}, "high", "high"),  # queue= override
    ],
)
def test_a_task_runs_only_on_the_workers_of_its_queue(
    stack: Stack,
    api: ApiClient,
    database: Database,
    name: str,
    kwargs: dict[str, Any],
    override: str | None,
    queue: str,
) -> None:
    response = api.submit(name, kwargs, queue=override)
    assert response.status_code == 202, response.text
    assert response.json()["queue"] == queue
    task_id = response.json()["id"]
    api.wait_for_state(task_id, "SUCCESS", timeout=30)

    row = wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=10)
    assert row["worker"].startswith(f"{queue}@"), row
    stack.worker(queue).wait_for_log(task_id, timeout=5, since=0)
    for other in set(stack.options.groups) - {queue}:
        assert task_id not in stack.worker(other).log_text(), f"{other} saw {task_id}"


@pytest.mark.reliability("R09")
def test_an_unknown_queue_is_refused_not_created(stack: Stack, api: ApiClient) -> None:
    response = api.submit("demo.echo", {"message": "x"}, queue="defualt")
    assert response.status_code == 422, response.text
    assert queue_keys(redis_client(stack), "defualt") == []


@pytest.mark.reliability("R05")
def test_a_countdown_beyond_the_visibility_timeout_is_refused(api: ApiClient) -> None:
    too_long = api.submit("demo.echo", {"message": "late"}, countdown=MAX_COUNTDOWN + 1)
    assert too_long.status_code == 422, too_long.text
    assert "visibility timeout" in too_long.text

    started = time.monotonic()
    task_id = api.submit_ok("demo.echo", {"message": "soon"}, countdown=1)
    api.wait_for_state(task_id, "SUCCESS", timeout=30)
    assert time.monotonic() - started >= 1


@pytest.mark.reliability("R06")
def test_a_pickled_message_is_refused_and_never_runs(stack: Stack, database: Database) -> None:
    """The same task sent twice straight to the `default` queue: as JSON it runs; pickled
    (content type application/x-python-serialize) the worker refuses to deserialise it,
    so with accept_content=["json"] no side effect is ever written. Were pickle accepted,
    the untracked task would run and write its row like the JSON copy."""
    worker = stack.worker("default")
    offset = worker.log_size()
    pickled, plain = str(uuid.uuid4()), str(uuid.uuid4())
    run_python(
        stack,
        f"from {stack.package}.celery_app import app\n"
        f"for task_id, serializer in (({pickled!r}, 'pickle'), ({plain!r}, 'json')):\n"
        "    app.send_task('demo.record_effect', kwargs={'key': 'r06-' + serializer},\n"
        "                  task_id=task_id, queue='default', serializer=serializer)\n",
    )
    wait_until(lambda: effects(database, plain) == 1, 30, "the JSON copy never ran")
    worker.wait_for_log(r"untrusted content of type pickle", timeout=20, since=offset)
    time.sleep(1)
    assert effects(database, pickled) == 0
    assert queue_length(redis_client(stack), "default") == 0  # refused, not left to loop


@pytest.mark.reliability("R12", "R13", "R14", "R15")
def test_retries_back_off_with_jitter_and_exhausted_ones_go_dead(
    stack: Stack, api: ApiClient, database: Database, chaos_results: ChaosResults
) -> None:
    """R12: demo.flaky fails 3 times; each delay is drawn below 2, 4, then 5 s (factor 2,
    doubling, capped by TASK_RETRY_BACKOFF_MAX) and at least one of 12 falls well below
    its cap (full jitter; without it every delay would equal the cap). R15: the on_retry
    hook logs each retry, on_success the end. R13: self.retry(countdown=1) waits ~1 s.
    R14: demo.fail exhausts its retries, ends DEAD and leaves a copy on `dead`."""
    flaky = [api.submit_ok("demo.flaky", {"failures": MAX_RETRIES}) for _ in range(4)]
    manual = api.submit_ok("demo.retry_later", {"failures": 2, "countdown": 1})
    doomed = api.submit_ok("demo.fail", {"reason": "r14 always"})

    all_delays: list[tuple[int, float]] = []
    for task_id in flaky:
        api.wait_for_state(task_id, "SUCCESS", timeout=60)
        row = wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=10)
        assert row["attempts"] == str(MAX_RETRIES + 1), row
        delays = retry_delays(stack, task_id)
        assert len(delays) == MAX_RETRIES, delays
        for retry, delay in enumerate(delays):
            assert -0.5 <= delay <= backoff_bound(retry) + DELAY_SLACK, (retry, delays)
            all_delays.append((retry, delay))
        total = sum(delays)
        assert total <= sum(backoff_bound(n) for n in range(MAX_RETRIES)) + 3 * DELAY_SLACK
        worker = stack.worker("default")
        assert len(event_times(worker, task_id, "task_succeeded")) == 1
    assert any(delay < backoff_bound(retry) - 0.5 for retry, delay in all_delays), all_delays

    assert api.wait_for_state(manual, "SUCCESS", timeout=30)["result"] == 2
    manual_delays = retry_delays(stack, manual)
    assert len(manual_delays) == 2, manual_delays
    assert all(0.9 <= delay <= 1 + DELAY_SLACK for delay in manual_delays), manual_delays

    wait_ledger(database, doomed, {"DEAD"}, timeout=60)
    body = api.wait_for_state(doomed, "FAILURE", timeout=10)
    assert body["state"] == "DEAD", body
    assert body["attempts"] == MAX_RETRIES + 1
    assert "r14 always" in (body["last_error"] or "")
    assert len(event_times(stack.worker("default"), doomed, "task_retry")) == MAX_RETRIES
    assert len(event_times(stack.worker("default"), doomed, "task_dead")) == 1
    client = redis_client(stack)
    dead = [m for key in queue_keys(client, "dead") for m in client.lrange(key, 0, -1)]
    assert any(doomed.encode() in message for message in dead)
    listed = api.get("/api/v1/dead-letters?limit=500").json()
    assert doomed in [item["id"] for item in listed]
    chaos_results.record(
        "R12 retry delays",
        delays_by_retry={
            str(n): sorted(round(d, 2) for r, d in all_delays if r == n) for n in range(MAX_RETRIES)
        },
        caps=[backoff_bound(n) for n in range(MAX_RETRIES)],
    )


def wait_for_celery_state(api: ApiClient, task_id: str, wanted: str, timeout: float) -> None:
    """Poll fast: STARTED and RETRY last only a few seconds."""
    seen: list[str] = []

    def reached() -> bool:
        state = task_state(api.status(task_id).json())
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == wanted

    wait_until(reached, timeout, f"{task_id} never {wanted}: saw {seen}", step=0.05)


@pytest.mark.reliability("R22", "R23")
def test_started_progress_and_retry_are_visible_through_the_api(api: ApiClient) -> None:
    started = api.submit_ok("demo.record_effect", {"key": "r22-started", "seconds": 3})
    wait_for_celery_state(api, started, "STARTED", timeout=20)

    progress = api.submit_ok("demo.sleep", {"seconds": 3})
    wait_for_celery_state(api, progress, "PROGRESS", timeout=20)
    body = api.status(progress).json()
    assert body["progress"] is not None
    assert body["progress"]["total"] == 30, body

    retrying = api.submit_ok("demo.retry_later", {"failures": 1, "countdown": 4})
    wait_for_celery_state(api, retrying, "RETRY", timeout=20)
    assert api.status(retrying).json()["state"] == "RETRY"

    for task_id in (started, progress, retrying):
        api.wait_for_state(task_id, "SUCCESS", timeout=30)


@pytest.mark.reliability("R24")
def test_a_running_task_aborts_early_on_request(api: ApiClient, database: Database) -> None:
    seconds = 6
    task_id = api.submit_ok("demo.sleep", {"seconds": seconds})
    wait_for_celery_state(api, task_id, "PROGRESS", timeout=20)
    asked = time.monotonic()
    response = api.cancel(task_id)
    assert response.status_code == 202, response.text
    assert response.json()["action"] == "abort_requested"

    api.wait_for_state(task_id, "REVOKED", timeout=seconds)
    assert time.monotonic() - asked < seconds - 2, "stopped at a checkpoint, not at the end"
    assert wait_ledger(database, task_id, {"REVOKED"}, timeout=10)["state"] == "REVOKED"


@pytest.mark.reliability("R11", "R24")
def test_urgent_tasks_jump_the_queue_and_a_revoked_one_never_runs(
    stack: Stack, api: ApiClient, database: Database, chaos_results: ChaosResults
) -> None:
    """With the default workers stopped, three priority-9 tasks are queued, then three
    priority-0 ones (0 is most urgent on Redis), then one that is revoked while queued.
    One worker with one slot then serves the urgent ones first; the revoked one never
    runs (its ledger row is final, so the delivery is dropped)."""
    worker = stack.worker("default")
    with worker.supervision_paused():
        restarts = worker.restarts
        worker.kill(signal.SIGTERM, group=False)
        worker.wait_for_exit(30)
        relaxed = [
            api.submit_ok("demo.record_effect", {"key": f"r11-low-{n}"}, priority=9)
            for n in range(3)
        ]
        urgent = [
            api.submit_ok("demo.record_effect", {"key": f"r11-high-{n}"}, priority=0)
            for n in range(3)
        ]
        revoked = api.submit_ok("demo.record_effect", {"key": "r24-revoked"})
        cancel = api.cancel(revoked)
        assert cancel.status_code == 202, cancel.text
        assert cancel.json()["action"] == "revoked"
        assert ledger(database, revoked)["state"] == "REVOKED"
        assert queue_length(redis_client(stack), "default") == 7

        one_slot = stack.start_extra(
            "worker", "default", env={"WORKER_DEFAULT_CONCURRENCY": "1"}, restart=False
        )
        try:
            for task_id in relaxed + urgent:
                wait_ledger(database, task_id, {"SUCCEEDED"}, timeout=30)
            wait_until(
                lambda: queue_length(redis_client(stack), "default") == 0,
                15,
                "the revoked message was not consumed",
            )
            one_slot.wait_for_log(revoked, timeout=10, since=0)
        finally:
            one_slot.stop()
    restart_and_wait(stack, "worker-default", restarts)

    times = effect_times(database, relaxed + urgent)
    order = sorted(times, key=lambda task_id: times[task_id])
    assert set(order[:3]) == set(urgent), order
    assert max(times[t] for t in urgent) < min(times[t] for t in relaxed)
    assert effects(database, revoked) == 0
    row = ledger(database, revoked)
    assert row["state"] == "REVOKED", row
    assert row["attempts"] == "0", row
    first: datetime = times[order[0]]
    chaos_results.record(
        "R11 priority",
        order=["urgent" if t in urgent else "relaxed" for t in order],
        spread_seconds=round((times[order[-1]] - first).total_seconds(), 3),
    )
