"""Ledger and task input hygiene on real processes: error text the ledger can store,
arguments bounded by what they fill, and replays that run once, only for allowed tasks."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.harness.api import ApiClient
from tests.harness.databases import Database
from tests.harness.probes import ledger, queue_keys, run_python, wait_ledger, wait_until
from tests.harness.redis import RedisDeployment
from tests.harness.stack import Stack, StackOptions

pytestmark = pytest.mark.reliability("R49")

MAX_RETRIES = 1
HYGIENE_SETTINGS = {
    "TASK_MAX_RETRIES": str(MAX_RETRIES),
    "TASK_RETRY_BACKOFF_MAX": "1",
    # Short reconcile timings: a row left behind by a failed ledger update is re-sent soon.
    "RECONCILE_INTERVAL": "2",
    "RECONCILE_QUEUED_AFTER": "3",
    "RECONCILE_PUBLISHED_AFTER": "8",
    "API_TASK_ALLOWLIST": "demo.echo,demo.fail,demo.record_effect,demo.sleep",
}
CONCURRENT_REPLAYS = 20


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    return StackOptions(env=dict(HYGIENE_SETTINGS))


def dead_copies(redis_deployment: RedisDeployment, task_id: str) -> int:
    """Messages of this task on the dead queue."""
    client = redis_deployment.master_client()
    return sum(
        json.loads(message)["headers"]["id"] == task_id
        for key in queue_keys(client, "dead")
        for message in client.lrange(key, 0, -1)
    )


def submit_past_the_api(stack: Stack, name: str, kwargs: dict[str, Any]) -> str:
    """Record and send a task as `ledger.publish.submit` does, without the API's checks."""
    code = (
        f"from {stack.package}.celery_app import app\n"
        f"from {stack.package}.ledger.publish import submit\n"
        f"print(submit(app, {name!r}, {kwargs!r}).id)\n"
    )
    return run_python(stack, code).strip()


def dead_task(api: ApiClient, database: Database, reason: str = "always") -> str:
    task_id = api.submit_ok("demo.fail", {"reason": reason})
    wait_ledger(database, task_id, {"DEAD"}, timeout=60)
    return task_id


def test_a_nul_byte_in_an_error_is_stored_and_the_task_runs_its_attempts_once(
    api: ApiClient, database: Database, redis_deployment: RedisDeployment
) -> None:
    task_id = dead_task(api, database, reason="nul\u0000here")
    row = ledger(database, task_id)
    assert int(row["attempts"]) == MAX_RETRIES + 1, row
    assert api.status(task_id).json()["last_error"] == "RetryableError: nulhere"
    # Nothing is sent again afterwards: the same attempts and one dead copy two passes later.
    time.sleep(2 * float(HYGIENE_SETTINGS["RECONCILE_INTERVAL"]))
    assert ledger(database, task_id)["attempts"] == row["attempts"]
    assert dead_copies(redis_deployment, task_id) == 1


def test_arguments_past_their_column_are_refused(api: ApiClient) -> None:
    long_key = api.submit("demo.record_effect", {"key": "k" * 300})
    assert long_key.status_code == 422
    assert "key" in long_key.json()["detail"]


def test_a_database_error_is_recorded_without_its_statement(
    stack: Stack, api: ApiClient, database: Database
) -> None:
    """Sent past the API's bound: the INSERT overflows its column (SQLite does not check)."""
    secret = "k" * 300
    task_id = submit_past_the_api(stack, "demo.record_effect", {"key": secret})
    if database.kind == "sqlite":
        wait_ledger(database, task_id, {"SUCCEEDED"})
        return
    wait_ledger(database, task_id, {"FAILED"})
    body = api.status(task_id).json()
    for shown in (body["last_error"], json.dumps(body.get("error"))):
        assert "INSERT" not in shown, body
        assert secret not in shown, body


@pytest.mark.reliability("R14")
def test_concurrent_replays_of_one_dead_task_run_it_once(
    api: ApiClient, database: Database
) -> None:
    dead_id = dead_task(api, database)
    path = f"/api/v1/dead-letters/{dead_id}/replay"
    with ThreadPoolExecutor(CONCURRENT_REPLAYS) as pool:
        answers = list(pool.map(lambda _: api.http.post(path), range(CONCURRENT_REPLAYS)))
    assert {answer.status_code for answer in answers} == {202}, [a.text for a in answers]
    replay_ids = {answer.json()["id"] for answer in answers}
    assert len(replay_ids) == 1, replay_ids
    (replay_id,) = replay_ids
    rows = database.query(f"SELECT id FROM task_ledger WHERE replay_of = '{dead_id}'")
    assert [row[0] for row in rows] == [replay_id]
    row = wait_ledger(database, replay_id, {"DEAD"}, timeout=60)
    assert int(row["attempts"]) == MAX_RETRIES + 1, row  # one execution, with its retry


def replay_script(stack: Stack, dead_id: str, made: Path, coming: Path, first: bool) -> str:
    """Replay a dead task in one ledger transaction. The first writes its new run's id to
    `made`, then keeps the transaction open until the second announces itself in `coming`
    (and a second more); the second writes `coming` just before it replays."""
    if first:
        before = ""
        after = (
            f"    pathlib.Path({str(made)!r}).write_text(run.id)\n"
            f"    while not pathlib.Path({str(coming)!r}).exists():\n"
            "        time.sleep(0.05)\n"
            "    time.sleep(1)\n"
        )
    else:
        before = f"    pathlib.Path({str(coming)!r}).touch()\n"
        after = ""
    return (
        "import pathlib, time\n"
        f"from {stack.package}.celery_app import app\n"
        f"from {stack.package}.ledger.db import session_scope\n"
        f"from {stack.package}.ledger.deadletters import replay\n"
        "with session_scope() as session:\n"
        f"{before}"
        f"    run = replay(session, app, {dead_id!r})\n"
        "    session.flush()\n"
        f"{after}"
        "print(run.id)\n"
    )


@pytest.mark.reliability("R14")
def test_a_replay_waits_for_the_one_in_progress_and_returns_its_run(
    stack: Stack, api: ApiClient, database: Database
) -> None:
    """The dead row's lock, not timing luck: a replay that comes while another one's
    transaction is open waits for it, then gets its run. Without the lock it would not see
    that uncommitted run, make a second one and finish before the first commits."""
    dead_id = dead_task(api, database)
    made, coming = stack.run_dir / f"replay-made-{dead_id}", stack.run_dir / f"replay-{dead_id}"
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(run_python, stack, replay_script(stack, dead_id, made, coming, True))

        def first_made_its_run() -> bool:
            if made.exists():
                return True
            assert not first.done(), first.result()
            return False

        wait_until(first_made_its_run, 60, "the first replay making its run", 0.05)
        second_id = run_python(stack, replay_script(stack, dead_id, made, coming, False)).strip()
        first_id = first.result().strip()
    assert second_id == first_id == made.read_text()
    rows = database.query(f"SELECT id FROM task_ledger WHERE replay_of = '{dead_id}'")
    assert [row[0] for row in rows] == [first_id]


@pytest.mark.reliability("R14")
def test_a_replay_needs_a_known_id_and_an_allowed_task(
    stack: Stack, api: ApiClient, database: Database
) -> None:
    unknown = api.http.post("/api/v1/dead-letters/00000000-0000-0000-0000-000000000000/replay")
    assert unknown.status_code == 404
    # Sent past the API (its allowlist does not hold demo.retry_later): it still goes dead.
    task_id = submit_past_the_api(stack, "demo.retry_later", {"failures": 20, "countdown": 0})
    wait_ledger(database, task_id, {"DEAD"}, timeout=60)
    refused = api.http.post(f"/api/v1/dead-letters/{task_id}/replay")
    assert refused.status_code == 422
    assert "allowlist" in refused.json()["detail"]
    assert api.get("/api/v1/dead-letters?offset=99999999999999999999").status_code == 422
