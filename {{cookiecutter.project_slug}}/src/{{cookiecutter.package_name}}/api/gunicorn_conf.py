"""gunicorn configuration: uvicorn workers, timeouts sized to the publish retry policy."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from prometheus_client import multiprocess

from {{ cookiecutter.package_name }}.settings import get_settings

_settings = get_settings()

bind = _settings.api_bind
workers = _settings.api_workers
worker_class = "uvicorn_worker.UvicornWorker"
# A publish may retry through a whole Sentinel failover before answering 503.
timeout = _settings.api_timeout
graceful_timeout = 30
keepalive = 5
# Access lines are logged as JSON by the application itself.
accesslog = None

# Metrics of all workers are merged through files in one directory.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prometheus-")


def on_starting(server: Any) -> None:
    """Start from an empty metrics directory: files of a previous run would be merged."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
