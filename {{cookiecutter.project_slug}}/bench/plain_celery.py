"""A Celery app left at Celery's defaults: the baseline of the worker scenarios.

Only the broker and the result backend are set, to the same Redis the project uses (the
same Sentinel URLs, master name and passwords). Everything else (acks, prefetch, events,
serialisation, retries, logging) is whatever Celery does out of the box, unless
BENCH_PLAIN_SETTINGS (a JSON object of Celery settings) adds some: how the settings
scenario prices the project's reliability settings one at a time (bench/settings_cost.py).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

from {{ cookiecutter.package_name }}.settings import get_settings

_settings = get_settings()


def _transport_options() -> dict[str, Any]:
    """What a Sentinel URL cannot carry: the master's name and the sentinels' user."""
    if _settings.redis_mode != "sentinel":
        return {}
    sentinel_user = {
        "username": _settings.redis_sentinel_username or None,
        "password": _settings.redis_sentinel_password.get_secret_value() or None,
    }
    return {"master_name": _settings.redis_master_name, "sentinel_kwargs": sentinel_user}


app = Celery("plain", broker=_settings.broker_url, backend=_settings.result_backend_url)
app.conf.broker_transport_options = _transport_options()
app.conf.result_backend_transport_options = _transport_options()
app.conf.update(json.loads(os.environ.get("BENCH_PLAIN_SETTINGS", "{}")))


@app.task(name="plain.noop")
def noop(message: str) -> str:
    """Return at once: what the worker itself costs per task."""
    return message


@app.task(name="plain.sleep")
def sleep(seconds: float) -> float:
    """Sleep (cooperatively under gevent): a task that waits on something."""
    time.sleep(seconds)
    return seconds
