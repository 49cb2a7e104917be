"""The ledger's periodic tasks, run by beat (routed to `high` by the `ledger.*` glob)."""

from __future__ import annotations

from {{ cookiecutter.package_name }}.celery_app import app, reliable_app
from {{ cookiecutter.package_name }}.ledger.reconcile import prune, reconcile
from {{ cookiecutter.package_name }}.settings import get_settings
from {{ cookiecutter.package_name }}.tasks.base import ReliableTask


@reliable_app.task(name="ledger.reconcile", bind=True)
def reconcile_ledger(self: ReliableTask) -> dict[str, int]:
    """R34: re-publish lost rows, bury rows past the attempt limit."""
    report = reconcile(app, get_settings())
    return {"redispatched": len(report.redispatched), "dead": len(report.dead)}


@reliable_app.task(name="ledger.prune", bind=True)
def prune_ledger(self: ReliableTask) -> int:
    """Delete finished rows older than LEDGER_RETENTION_DAYS."""
    return prune(get_settings())
