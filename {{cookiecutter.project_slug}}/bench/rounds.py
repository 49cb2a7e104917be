"""Rounds and their summary: variants alternate, figures are medians with min and max.

Machine drift (another process, a CPU frequency change, a cache that warms) hits every
variant alike when they take turns within a round and each round starts one further on:
A B C, then B C A, then C A B.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def rotated(variants: Sequence[T], round_index: int) -> list[T]:
    """The order of the variants in round `round_index` (0-based)."""
    shift = round_index % len(variants) if variants else 0
    return [*variants[shift:], *variants[:shift]]


def summary(samples: Sequence[float], unit: str) -> dict[str, Any]:
    """A figure as reported: median, min, max and every sample, in `unit`."""
    if not samples:
        raise ValueError("a figure needs at least one sample")
    return {
        "unit": unit,
        "median": round(statistics.median(samples), 4),
        "min": round(min(samples), 4),
        "max": round(max(samples), 4),
        "samples": [round(sample, 4) for sample in samples],
    }


def ratio(figure: dict[str, Any], baseline: dict[str, Any]) -> float:
    """figure / baseline, from the medians of the same run."""
    return round(float(figure["median"]) / float(baseline["median"]), 3)
