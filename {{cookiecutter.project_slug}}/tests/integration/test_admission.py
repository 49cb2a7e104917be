"""Admission control on the real stack: a queue with no workers takes submissions up to its
bound, refuses the rest with 503 and loses none it accepted; the rate limit is shared by
every API process through Redis; keys are checked by the running API."""

from __future__ import annotations

import time

import pytest

from {{ cookiecutter.package_name }}.api.keys import Scope
from tests.harness.api import ApiClient, metric_value
from tests.harness.databases import Database
from tests.harness.probes import ledger_rows, wait_until
from tests.harness.stack import Stack, StackOptions
from tests.harness.waiting import NotYet

pytestmark = pytest.mark.reliability("R48")

BACKLOG_BOUND = 25
OVERFLOW = 15
RATE = 300  # requests per minute and caller
DRAIN_TIMEOUT = 90


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    """No `low` workers (its queue only fills), two API processes sharing one rate limit."""
    return StackOptions(
        groups=("high", "default"),
        beat=False,
        env={
            "API_MAX_BACKLOG_LOW": str(BACKLOG_BOUND),
            "API_RATE_LIMIT": f"{RATE}/minute",
            "API_WORKERS": "2",
        },
    )


def test_a_full_queue_refuses_at_its_bound_and_runs_everything_it_accepted(
    stack: Stack, api: ApiClient, database: Database
) -> None:
    answers = [
        api.submit("demo.echo", {"message": f"backlog-{n}"}, queue="low")
        for n in range(BACKLOG_BOUND + OVERFLOW)
    ]

    codes = [answer.status_code for answer in answers]
    assert codes == [202] * BACKLOG_BOUND + [503] * OVERFLOW, [a.text for a in answers[-2:]]
    refusal = answers[-1]
    assert int(refusal.headers["Retry-After"]) > 0
    assert f"API_MAX_BACKLOG_LOW={BACKLOG_BOUND}" in refusal.json()["detail"]
    refused_metric = metric_value(
        api.metrics(), "api_submissions_refused_total", {"reason": "backlog", "queue": "low"}
    )
    assert refused_metric == OVERFLOW
    # The ledger holds exactly the accepted ones: a refusal wrote nothing.
    low_rows = database.query("SELECT count(*) FROM task_ledger WHERE queue = 'low'")
    assert int(low_rows[0][0]) == BACKLOG_BOUND

    stack.start_extra("worker", "low")
    accepted = [answer.json()["id"] for answer in answers[:BACKLOG_BOUND]]

    def drained() -> bool:
        states = {row["state"] for row in ledger_rows(database, accepted).values()}
        if states != {"SUCCEEDED"}:
            raise NotYet(states)
        return True

    wait_until(drained, DRAIN_TIMEOUT, f"the {BACKLOG_BOUND} accepted tasks SUCCEEDED", 0.5)
    assert api.submit("demo.echo", {"message": "after"}, queue="low").status_code == 202


def test_the_rate_limit_is_shared_by_every_api_process(stack: Stack) -> None:
    key = stack.add_api_key("bursty", [Scope.TASKS_READ])
    time.sleep(1.5)  # the API re-reads its key file within a second
    with stack.api_client(api_key=key) as client:
        codes = [
            client.status(f"00000000-0000-4000-8000-{n:012d}").status_code for n in range(RATE + 20)
        ]
        limited = client.status("00000000-0000-4000-8000-000000000000")
    # Unknown ids answer 404: each one passed the limit. Two processes with a limit each
    # would have let all of them through.
    assert RATE - 10 <= codes.count(404) <= RATE, codes.count(404)
    assert codes.count(429) >= 20
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


def test_the_running_api_checks_keys_and_scopes(stack: Stack) -> None:
    reader = stack.add_api_key("reader", [Scope.TASKS_READ])
    time.sleep(1.5)
    with ApiClient(stack.api_url) as anonymous, stack.api_client(api_key=reader) as client:
        assert anonymous.submit("demo.echo", {"message": "x"}).status_code == 401
        forbidden = client.submit("demo.echo", {"message": "x"})
    assert forbidden.status_code == 403
    assert "tasks:submit" in forbidden.json()["detail"]
