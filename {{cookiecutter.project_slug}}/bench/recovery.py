"""Recovery: how long the stack takes to come back, as the chaos tier last measured it.

Nothing is broken here: `make test-chaos` kills prefork children, whole workers and the
Redis master, and writes what it measured to tests/chaos/results/last-run.json. This
reads that file, when there is one, and keeps every duration it holds (keys ending in
`_seconds`; a list becomes its median and max). Without it the scenario says "not run".
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from tests.harness.stack import PROJECT_DIR

CHAOS_RESULTS = PROJECT_DIR / "tests" / "chaos" / "results" / "last-run.json"


def durations(numbers: dict[str, Any]) -> dict[str, float]:
    found: dict[str, float] = {}
    for key, value in sorted(numbers.items()):
        if not key.endswith("_seconds"):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[key] = float(value)
        elif isinstance(value, list) and value:
            found[f"{key}.median"] = float(statistics.median(value))
            found[f"{key}.max"] = float(max(value))
    return found


def run(source: Path = CHAOS_RESULTS) -> dict[str, Any]:
    if not source.is_file():
        return {"status": "not run", "source": str(source.relative_to(PROJECT_DIR))}
    document = json.loads(source.read_text())
    scenarios = {
        name: found
        for name, numbers in sorted(document.get("scenarios", {}).items())
        if (found := durations(numbers))
    }
    return {
        "status": "measured",
        "source": str(source.relative_to(PROJECT_DIR)),
        "measured_at": document.get("finished_at"),
        "scenarios": scenarios,
    }
