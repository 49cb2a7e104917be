"""Fuzz tier: schemathesis generates requests from the API's own OpenAPI schema and sends
them to the real running service (gunicorn, Redis Sentinel or standalone, the ledger
database, workers). Every operation, valid and invalid data, with three checks on every
answer: no 5xx, the body matches the documented schema, and the status code is one the
operation documents.

Bounded and repeatable: FUZZ_EXAMPLES cases per operation and mode, derandomized, no
example database. Each failure it found became a regression test in
tests/unit/test_api_hygiene.py. (schemathesis' pytest loader for a schema from a fixture
does not run under pytest 9.2, so the test drives each operation's strategy itself.)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from {{ cookiecutter.package_name }}.settings import get_settings
from tests.harness.stack import Stack, StackOptions

# Generated cases per operation and mode: enough to reach every documented answer, few
# enough for CI (about two minutes on two cores, stack start included).
FUZZ_EXAMPLES = 100
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    # Fuzzing calls faster than a real caller may: the rate limit would answer most
    # cases with 429, which is documented but tests nothing else.
    return StackOptions(env={"API_RATE_LIMIT": "100000/second"}, beat=False)


def cases_of(
    operation: APIOperation[Any, Any, Any, Any], mode: GenerationMode
) -> st.SearchStrategy[Case[Any]]:
    """The operation's cases; valid submissions name an allowlisted task (the schema
    cannot: the allowlist is a setting), so they get past the catalog to dispatch."""
    cases = operation.as_strategy(generation_mode=mode)
    if operation.label != "POST /api/v1/tasks" or mode is GenerationMode.NEGATIVE:
        return cases
    return st.tuples(cases, st.sampled_from(get_settings().api_task_allowlist)).map(_named)


def _named(drawn: tuple[Case[Any], str]) -> Case[Any]:
    case, name = drawn
    assert isinstance(case.body, dict), case.body
    case.body = {**case.body, "name": name}
    return case


def api_headers(stack: Stack) -> dict[str, str]:
    """What every fuzz request carries: the harness' all-scopes key."""
    return {"X-API-Key": stack.api_key}


@pytest.mark.reliability("R47")
@pytest.mark.parametrize("mode", list(GenerationMode))
def test_every_operation_conforms_to_its_schema(stack: Stack, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json")
    headers = api_headers(stack)
    cases: dict[str, Counter[int]] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        cases[operation.label] = Counter()

        @FUZZ_SETTINGS
        @given(case=cases_of(operation, mode))
        def fuzz(case: Case[Any]) -> None:
            response = case.call_and_validate(
                base_url=stack.api_url, headers=headers, checks=CHECKS, timeout=30
            )
            cases[case.operation.label][response.status_code] += 1

        try:
            fuzz()
        except Unsatisfiable:
            # Nothing to make invalid: an operation without parameters or body.
            assert mode is GenerationMode.NEGATIVE, operation.label
        answers = cases[operation.label]
        print(f"{mode} {operation.label}: {answers.total()} cases, by status {dict(answers)}")
    assert sum(answers.total() for answers in cases.values()) >= FUZZ_EXAMPLES
