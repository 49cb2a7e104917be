"""A worker that stops consuming exits, so its supervisor restarts it.

After a Sentinel failover, redis-py 8 can reconnect a worker's pub/sub connection inside
a blocking read that has no timeout: the worker neither consumes nor exits, and a
restart policy never fires. The watchdog pings its own worker through the broker every
WORKER_WATCHDOG_INTERVAL seconds. The ping is a broadcast, so it also wakes such a read;
a worker that still has not answered for WORKER_WATCHDOG_TIMEOUT seconds exits with
status 70 and is restarted (compose restart policy, Kubernetes, the test harness).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import Celery, signals

from {{ cookiecutter.package_name }}.broker_errors import BROKER_ERRORS
from {{ cookiecutter.package_name }}.healthcheck import touch_heartbeat
from {{ cookiecutter.package_name }}.settings import get_settings

logger = logging.getLogger(__name__)

EXIT_STATUS = 70  # EX_SOFTWARE: an internal failure the supervisor should restart


class ConsumerWatchdog:
    def __init__(
        self, app: Celery, nodename: str, interval: float, timeout: float, heartbeat_file: str = ""
    ) -> None:
        self.app = app
        self.nodename = nodename
        self.interval = interval
        self.timeout = timeout
        # Touched on every answer: the container healthcheck reads its age (healthcheck.py).
        self.heartbeat_file = heartbeat_file
        self.last_answer = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consumer-watchdog", daemon=True)

    def start(self) -> None:
        touch_heartbeat(self.heartbeat_file)
        self._thread.start()

    def stop(self) -> None:
        """A worker shutting down stops answering on purpose: stand down."""
        self._stopped.set()

    def answered(self) -> bool:
        try:
            replies = self.app.control.ping(destination=[self.nodename], timeout=self.interval)
        except BROKER_ERRORS as exc:
            logger.warning("watchdog ping not sent", extra={"error": str(exc)})
            return False
        return any(self.nodename in reply for reply in replies or [])

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            if self.answered():
                self.last_answer = time.monotonic()
                touch_heartbeat(self.heartbeat_file)
                continue
            silent = time.monotonic() - self.last_answer
            if silent >= self.timeout and not self._stopped.is_set():
                logger.critical(
                    "worker stopped answering its own ping; exiting for a restart",
                    extra={"event": "worker_watchdog_exit", "silent_seconds": round(silent)},
                )
                logging.shutdown()
                os._exit(EXIT_STATUS)


_watchdogs: list[ConsumerWatchdog] = []


def _start_watchdog(sender: Any, **_: Any) -> None:
    """Once the worker consumes, watch that it keeps answering."""
    settings = get_settings()
    watchdog = ConsumerWatchdog(
        sender.app,
        sender.hostname,
        settings.worker_watchdog_interval,
        settings.worker_watchdog_timeout,
        settings.heartbeat_file,
    )
    _watchdogs.append(watchdog)
    watchdog.start()


def _stop_watchdogs(**_: Any) -> None:
    for watchdog in _watchdogs:
        watchdog.stop()


def connect() -> None:
    """Start a watchdog with each worker, stop it on shutdown; called by the Celery app module."""
    signals.worker_ready.connect(_start_watchdog, weak=False)
    signals.worker_shutting_down.connect(_stop_watchdogs, weak=False)
