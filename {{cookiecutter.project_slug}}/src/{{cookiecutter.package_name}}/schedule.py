"""Periodic work (R29): the default entries, seeded into the `periodic_tasks` table.

Beat reads the table (ledger/beat.py), so entries can be changed at run time (R30);
these defaults are inserted only when no row of that name exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery.schedules import crontab, schedule

from {{ cookiecutter.package_name }}.ledger.models import PeriodicTask
from {{ cookiecutter.package_name }}.settings import Settings


@dataclass(frozen=True)
class PeriodicSpec:
    """One periodic entry, checked once: a ValueError unless its timing is one Celery runs."""

    name: str
    task: str
    interval_seconds: float | None = None
    crontab: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None

    def __post_init__(self) -> None:
        celery_schedule(self.interval_seconds, self.crontab)

    def row(self, *, enabled: bool = True) -> PeriodicTask:
        """The `periodic_tasks` row of this entry (beat's defaults and the CLI's `set`)."""
        return PeriodicTask(
            name=self.name,
            task=self.task,
            interval_seconds=self.interval_seconds,
            crontab=self.crontab,
            kwargs=self.kwargs,
            queue=self.queue,
            enabled=enabled,
        )


def default_entries(settings: Settings) -> list[PeriodicSpec]:
    return [
        # Interval entry: a cheap liveness tick on the high queue.
        PeriodicSpec("urgent-ping-tick", "demo.urgent_ping", settings.beat_tick_seconds),
        # Crontab entry: a nightly fan-out report on the low queue.
        PeriodicSpec(
            "nightly-report",
            "demo.reports.build_report",
            crontab=settings.beat_report_crontab,
            kwargs={"size": 1000, "chunk_size": 100},
        ),
        # R34: re-dispatch what a failover or a dead worker lost.
        PeriodicSpec("ledger-reconcile", "ledger.reconcile", settings.reconcile_interval),
        # Keep the ledger small: finished rows past the retention period go.
        PeriodicSpec("ledger-prune", "ledger.prune", crontab=settings.ledger_prune_crontab),
    ]


def celery_schedule(interval_seconds: float | None, cron: str | None) -> schedule | crontab:
    """An entry's timing as Celery wants it: every N seconds, or a five-field crontab."""
    if interval_seconds is not None:
        return schedule(run_every=timedelta(seconds=interval_seconds))
    minute, hour, day_of_month, month_of_year, day_of_week = (cron or "").split()
    return crontab(minute, hour, day_of_week, day_of_month, month_of_year)


def build_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The same entries in Celery's own format (what `celery beat` would run without a DB)."""
    return {
        spec.name: {
            "task": spec.task,
            "schedule": celery_schedule(spec.interval_seconds, spec.crontab),
            "kwargs": spec.kwargs,
        }
        for spec in default_entries(settings)
    }
