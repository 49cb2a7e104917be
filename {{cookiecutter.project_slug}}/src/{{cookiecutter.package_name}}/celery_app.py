"""The Celery application: configuration, task modules and signal handlers in one place."""

from __future__ import annotations

from celery import Celery

from {{ cookiecutter.package_name }} import broker, worker_liveness
from {{ cookiecutter.package_name }}.observability import signals

# R08: task modules are listed explicitly, so every task is registered at worker start.
TASK_MODULES = (
    "{{ cookiecutter.package_name }}.tasks.demo",
    "{{ cookiecutter.package_name }}.tasks.reports",
    "{{ cookiecutter.package_name }}.ledger.tasks",
)

# Before any broker connection: kombu's Redis channels that survive a failover (broker.py).
broker.register()
app = Celery("{{ cookiecutter.package_name }}", include=list(TASK_MODULES))
app.config_from_object("{{ cookiecutter.package_name }}.celeryconfig")
signals.connect()
worker_liveness.connect()
