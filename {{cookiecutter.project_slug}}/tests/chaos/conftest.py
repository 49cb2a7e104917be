"""Chaos tier: the integration tier's real processes, broken on purpose.

Every scenario kills, stops or pauses something (a prefork child, a whole worker, the
Redis master, a sentinel) and checks what the reliability settings promise. The fixtures
are the integration tier's own (`redis_cluster`, `database`, `stack`, `api`...),
imported here rather than copied: one module, one private Redis + database + stack, with
`stack_options` overridden per module for short timings.

Measured numbers (failover rounds, accepted/succeeded/lost/duplicated tasks, worker
restarts, recovery seconds) are printed, listed in the terminal summary and written to
tests/chaos/results/last-run.json (git-ignored).

Long repetitions carry the `slow` marker (15 failovers instead of 5). `make test-chaos`
leaves them out (`-m "not slow"`, under 10 minutes on 2 cores); `make test-chaos
CHAOS_MARKERS=` or `pytest tests/chaos` runs them too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration import conftest as integration
from tests.integration.conftest import (  # noqa: F401 - fixtures shared with this tier
    _no_leaked_processes,
    api,
    database,
    database_kind,
    redis_cluster,
    redis_deployment,
    redis_mode,
    redis_standalone,
    stack,
    stack_options,
)

HERE = Path(__file__).resolve().parent
RESULTS_FILE = HERE / "results" / "last-run.json"


class ChaosResults:
    """Numbers measured by the scenarios, by scenario name."""

    def __init__(self) -> None:
        self.scenarios: dict[str, dict[str, Any]] = {}

    def record(self, scenario: str, **numbers: Any) -> None:
        self.scenarios.setdefault(scenario, {}).update(numbers)
        print(f"[chaos] {scenario}: {json.dumps(numbers, sort_keys=True, default=str)}")

    def write(self) -> None:
        if not self.scenarios:
            return
        RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": sys.version.split()[0],
            "scenarios": self.scenarios,
        }
        RESULTS_FILE.write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")


_results = ChaosResults()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/chaos/ carries the `chaos` marker."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.chaos)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The measured numbers, and the restart counts when the integration tier is not loaded
    (it prints them itself otherwise)."""
    if _results.scenarios:
        terminalreporter.section("chaos: measured")
        for scenario, numbers in sorted(_results.scenarios.items()):
            shown = json.dumps(numbers, sort_keys=True, default=str)
            terminalreporter.write_line(f"{scenario}: {shown}")
        terminalreporter.write_line(f"(written to {RESULTS_FILE})")
    if terminalreporter.config.pluginmanager.is_registered(integration):
        return
    reports = [report for report in integration._restart_reports if "chaos" in report[0]]
    if reports:
        terminalreporter.section("supervised processes: restarts")
        for module, restarts, logs in reports:
            counts = ", ".join(f"{name}={count}" for name, count in restarts.items())
            terminalreporter.write_line(f"{module}: {counts} (logs: {logs})")


@pytest.fixture(scope="session")
def chaos_results() -> Iterator[ChaosResults]:
    """Record numbers with `chaos_results.record("scenario", key=value)`."""
    yield _results
    _results.write()
