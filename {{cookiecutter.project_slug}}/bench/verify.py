"""The smoke check of a figures file: every scenario ran and wrote figures.

Never a speed: only that each scenario is there, has results, and that every median it
reports is a positive number (recovery may say "not run" when the chaos tier has not run).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

SCENARIOS = ("worker", "settings", "producer", "api", "scaling", "recovery")


def medians(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(where, value) of every figure's median anywhere in the document."""
    if isinstance(node, dict):
        if "median" in node:
            yield path, node["median"]
        for key, value in node.items():
            yield from medians(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from medians(value, f"{path}[{index}]")


def problems(document: dict[str, Any]) -> list[str]:
    found = []
    scenarios = document.get("scenarios", {})
    for name in SCENARIOS:
        scenario = scenarios.get(name)
        if not scenario:
            found.append(f"scenario {name}: missing")
            continue
        if name == "recovery":
            if scenario.get("status") not in {"measured", "not run"}:
                found.append(f"recovery: unexpected status {scenario.get('status')!r}")
            continue
        figures = list(medians(scenario, name))
        if not figures:
            found.append(f"scenario {name}: no figures")
        for where, value in figures:
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                found.append(f"{where}: {value!r} is not a positive number")
    for name in ("worker", "settings", "producer", "api"):
        if not scenarios.get(name, {}).get("results"):
            found.append(f"scenario {name}: no results")
    scaling = scenarios.get("scaling", {})
    for part in ("concurrency", "ledger"):
        if not scaling.get(part):
            found.append(f"scenario scaling: no {part} results")
    return found
