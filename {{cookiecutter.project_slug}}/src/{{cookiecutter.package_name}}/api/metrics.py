"""Prometheus metrics of the API, shared across gunicorn workers when multiprocess mode is on."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from {{ cookiecutter.package_name }}.ledger.db import session_scope
from {{ cookiecutter.package_name }}.ledger.heartbeats import live_workers
from {{ cookiecutter.package_name }}.ledger.models import RecoveryCount, TaskRecord
from {{ cookiecutter.package_name }}.queues import QUEUE_NAMES
from {{ cookiecutter.package_name }}.settings import Settings, get_settings

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
    "Task submissions by outcome: published, queued (broker unreachable; reconcile publishes"
    " it), rejected (422) or ledger_unavailable (503)",
    ["task", "outcome"],
)
AUTH_FAILURES = Counter(
    "api_auth_failures_total",
    "Requests refused by authentication (missing, unknown_key, invalid_token) or scope (forbidden)",
    ["reason"],
)
SUBMISSIONS_REFUSED = Counter(
    "api_submissions_refused_total",
    "Requests refused by admission control: rate_limited (429) or a full queue's backlog (503)",
    ["reason", "queue"],
)

# Label values a client cannot grow: any other task name or HTTP method is counted here.
UNKNOWN = "unknown"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def count_submission(settings: Settings, name: str, outcome: str) -> None:
    """One submission in tasks_submitted_total; only allowlisted names get their own series."""
    task = name if name in settings.api_task_allowlist else UNKNOWN
    TASKS_SUBMITTED.labels(task, outcome).inc()


def method_label(method: str) -> str:
    """The request method as a label: the standard ones, anything else as `unknown`."""
    return method if method in HTTP_METHODS else UNKNOWN


class LedgerCollector(Collector):
    """Read at scrape time from the ledger, so the numbers survive restarts (R34)."""

    def collect(self) -> Iterator[Metric]:
        try:
            with session_scope() as session:
                by_state = session.execute(
                    select(TaskRecord.state, func.count()).group_by(TaskRecord.state)
                ).all()
                redispatches = session.scalar(
                    select(func.coalesce(func.sum(TaskRecord.dispatches - 1), 0)).where(
                        TaskRecord.dispatches > 1
                    )
                )
                recoveries = session.execute(select(RecoveryCount.cause, RecoveryCount.count)).all()
            workers = live_workers(get_settings().worker_dead_after, QUEUE_NAMES)
        except SQLAlchemyError:
            return
        tasks = GaugeMetricFamily("ledger_tasks", "Ledger rows by state", labels=["state"])
        for state, count in by_state:
            tasks.add_metric([state], count)
        yield tasks
        yield CounterMetricFamily(
            "ledger_redispatches",
            "Publishes beyond the first one: re-dispatches by the reconcile job",
            value=int(redispatches or 0),
        )
        by_cause = CounterMetricFamily(
            "ledger_recoveries",
            "Rows sent again by the reconcile job or the worker liveness sweep, by cause",
            labels=["cause"],
        )
        for cause, count in recoveries:
            by_cause.add_metric([cause], count)
        yield by_cause
        # Every queue, 0 included: the alert on a queue nobody consumes needs the zero.
        live = GaugeMetricFamily(
            "ledger_live_workers",
            "Worker processes with a fresh heartbeat (WORKER_DEAD_AFTER), by queue consumed",
            labels=["queue"],
        )
        for queue, count in workers.items():
            live.add_metric([queue], count)
        yield live


_LEDGER_COLLECTOR = LedgerCollector()
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    REGISTRY.register(_LEDGER_COLLECTOR)


def render() -> tuple[bytes, str]:
    """The exposition text: merged over all workers under gunicorn, this process otherwise."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(_LEDGER_COLLECTOR)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
