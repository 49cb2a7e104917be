"""Sentry for API, workers and beat; nothing at all when SENTRY_DSN is empty (R38)."""

from __future__ import annotations

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration

from {{ cookiecutter.package_name }}.settings import Settings


def init_sentry(settings: Settings, component: str) -> bool:
    """Initialise the SDK once per process; returns whether reporting is on."""
    dsn = settings.sentry_dsn.get_secret_value()
    if not dsn:
        return False
    sentry_sdk.init(
        dsn=dsn,
        environment=settings.environment,
        traces_sample_rate=settings.sentry_traces_sample_rate,
        send_default_pii=False,
        # Beat tasks become Sentry cron monitors: a missed or failed run alerts.
        integrations=[CeleryIntegration(monitor_beat_tasks=True)],
    )
    sentry_sdk.set_tag("component", component)
    sentry_sdk.set_tag("service", settings.service_name)
    return True
