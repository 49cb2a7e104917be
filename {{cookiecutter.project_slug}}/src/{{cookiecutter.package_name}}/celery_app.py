"""The Celery application: configuration, task modules and signal handlers in one place."""

from __future__ import annotations

from typing import cast

from celery import Celery

from {{ cookiecutter.package_name }} import broker, worker_liveness
from {{ cookiecutter.package_name }}.ledger import signals as ledger_signals
from {{ cookiecutter.package_name }}.observability import {% if cookiecutter.use_sentry == "yes" %}sentry, {% endif %}signals, watchdog
from {{ cookiecutter.package_name }}.tasks.base import ReliableTask

# R08: task modules are listed explicitly, so every task is registered at worker start.
TASK_MODULES = (
    "{{ cookiecutter.package_name }}.tasks.demo",
    "{{ cookiecutter.package_name }}.tasks.reports",
    "{{ cookiecutter.package_name }}.ledger.tasks",
)

# Before any broker connection: kombu's Redis channels that survive a failover (broker.py).
broker.register()
# Every task is a ReliableTask (retries, ledger claim, dead letters) unless it names a subclass.
# Task modules declare tasks on `reliable_app`, typed with that class, so mypy checks each
# task's `self`; code that only sends, inspects or revokes takes `app`, the same object.
reliable_app: Celery[ReliableTask] = Celery(
    "{{ cookiecutter.package_name }}", include=list(TASK_MODULES), task_cls=ReliableTask
)
app = cast(Celery, reliable_app)
app.config_from_object("{{ cookiecutter.package_name }}.celeryconfig")
signals.connect()
ledger_signals.connect()
watchdog.connect()
worker_liveness.connect()
{%- if cookiecutter.use_sentry == "yes" %}
sentry.connect()
{%- endif %}
