"""A worker's liveness, kept by its main process: lost workers' tasks run again in seconds.

Without this, the task of a worker that died whole (node lost, OOM-killed, `kill -9`)
waits for the visibility timeout before kombu restores its message. Here:
- at start, before consuming: a node name a live worker already answers to is refused
  (claims, the `worker` column and Celery's own control all go by that name); the first
  heartbeat is written; and what the previous process of this hostname was running is
  sent again at once, since a new process under its name proves it dead;
- every WORKER_HEARTBEAT_INTERVAL the heartbeat is renewed, and every half interval the
  tasks of processes silent for WORKER_DEAD_AFTER are sent again (reconcile.rescue_orphans),
  so a lost task runs again within WORKER_DEAD_AFTER plus half an interval;
- on a clean stop the heartbeat is deleted, so what this worker hands back runs at once.

A worker only judges others after its own heartbeats have succeeded for WORKER_DEAD_AFTER:
coming back from a database outage, it first gives the others the time to beat again.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any

from celery import Celery, signals
from sqlalchemy.exc import SQLAlchemyError

from {{ cookiecutter.package_name }}.broker_errors import BROKER_ERRORS
from {{ cookiecutter.package_name }}.ledger import heartbeats
from {{ cookiecutter.package_name }}.ledger.reconcile import rescue_orphans
from {{ cookiecutter.package_name }}.settings import Settings, get_settings

logger = logging.getLogger(__name__)

EXIT_NAME_TAKEN = 64  # EX_USAGE: the deployment must give each process its own name
NAME_CHECK_TIMEOUT = 1.0


class Liveness:
    def __init__(self, app: Celery, hostname: str, queues: list[str], settings: Settings) -> None:
        self.app = app
        self.hostname = hostname
        self.queues = queues
        self.settings = settings
        self.healthy_since: float | None = None  # monotonic time of the first good beat
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-liveness", daemon=True)

    def start(self) -> None:
        self.refuse_a_taken_name()
        self.beat()
        try:
            predecessors = heartbeats.supersede(self.hostname)
            if predecessors:
                rescue_orphans(self.app, self.settings, predecessors)
        except SQLAlchemyError as exc:
            # Their heartbeats stop all the same: the sweep finds their tasks later.
            logger.warning("predecessors not superseded", extra={"error": str(exc)})
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        try:
            heartbeats.forget()
        except SQLAlchemyError as exc:
            logger.warning("heartbeat not removed", extra={"error": str(exc)})

    def refuse_a_taken_name(self) -> None:
        """Exit if a live worker answers to this node name (two processes, one name)."""
        try:
            # A connection of its own, closed here: one left in the pool with its reply
            # read pending would be closed by every prefork child after the fork, and
            # that read blocks the child before it ever starts.
            with self.app.connection_for_write() as connection:
                replies = self.app.control.ping(
                    destination=[self.hostname], timeout=NAME_CHECK_TIMEOUT, connection=connection
                )
        except BROKER_ERRORS:
            return  # the broker is down: the consumer will wait for it anyway
        if any(self.hostname in reply for reply in replies or []):
            logger.critical(
                "another live worker has this node name; give each worker process its own"
                " (worker.sh --name, or a unique hostname per container)",
                extra={"event": "worker_name_taken", "hostname": self.hostname},
            )
            logging.shutdown()
            os._exit(EXIT_NAME_TAKEN)

    def beat(self) -> None:
        try:
            heartbeats.beat(self.hostname, self.queues)
        except SQLAlchemyError as exc:
            self.healthy_since = None
            logger.warning("heartbeat not written", extra={"error": str(exc)})
            return
        if self.healthy_since is None:
            self.healthy_since = time.monotonic()

    def sweep(self) -> None:
        healthy_for = 0.0 if self.healthy_since is None else time.monotonic() - self.healthy_since
        if healthy_for < self.settings.worker_dead_after:
            return
        try:
            rescue_orphans(self.app, self.settings)
        except SQLAlchemyError as exc:
            logger.warning("lost workers not swept", extra={"error": str(exc)})

    def _run(self) -> None:
        half = self.settings.worker_heartbeat_interval / 2
        for tick in itertools.count(1):
            if self._stopped.wait(half):
                return
            if tick % 2 == 0:
                self.beat()
            self.sweep()


_running: list[Liveness] = []


def _start(sender: str, instance: Any, **_: Any) -> None:
    """celeryd_after_setup: the queues are known and nothing is consumed yet."""
    liveness = Liveness(
        instance.app, sender, sorted(instance.app.amqp.queues.consume_from), get_settings()
    )
    liveness.start()
    _running.append(liveness)


def _stop(**_: Any) -> None:
    """worker_shutdown: the pool has finished or handed back its tasks."""
    while _running:
        _running.pop().stop()


def connect() -> None:
    signals.celeryd_after_setup.connect(_start, weak=False)
    signals.worker_shutdown.connect(_stop, weak=False)
