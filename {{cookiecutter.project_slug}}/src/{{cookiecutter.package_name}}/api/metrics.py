"""Prometheus metrics of the API, shared across gunicorn workers when multiprocess mode is on."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds", "HTTP request latency by route template", ["method", "route"]
)
TASKS_SUBMITTED = Counter(
    "tasks_submitted_total",
    "Task submissions by outcome: accepted, rejected (4xx) or broker_unavailable (503)",
    ["task", "outcome"],
)


def render() -> tuple[bytes, str]:
    """The exposition text: merged over all workers under gunicorn, this process otherwise."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
