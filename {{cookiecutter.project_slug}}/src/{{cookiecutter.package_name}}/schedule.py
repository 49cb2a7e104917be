"""Periodic work run by beat (R29): one interval entry and one crontab entry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab

from {{ cookiecutter.package_name }}.settings import Settings


def build_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    minute, hour, day_of_month, month_of_year, day_of_week = settings.beat_report_crontab.split()
    tick = timedelta(seconds=settings.beat_tick_seconds)
    return {
        # Interval entry: a cheap liveness tick on the high queue; stale ticks expire
        # instead of piling up while workers are down.
        "urgent-ping-tick": {
            "task": "demo.urgent_ping",
            "schedule": tick,
            "options": {"expires": tick.total_seconds()},
        },
        # Crontab entry: a nightly fan-out report on the low queue.
        "nightly-report": {
            "task": "demo.reports.build_report",
            "schedule": crontab(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month_of_year,
                day_of_week=day_of_week,
            ),
            "kwargs": {"size": 1000, "chunk_size": 100},
        },
    }
