"""The worker-side request class: a delivery of a finished task is acked, never run (R21)."""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery.worker.request import Request
from celery.worker.state import task_ready

from {{ cookiecutter.package_name }}.ledger.publish import REDISPATCH_HEADER
from {{ cookiecutter.package_name }}.ledger.tracking import is_final, release, requeue

logger = logging.getLogger(__name__)


class LedgerRequest(Request):
    """Checked in the worker before the task reaches the pool (and before STARTED is stored).

    A message can arrive twice: restored by kombu after a worker loss or a failover
    (flagged `redelivered`), or sent again by the reconcile job while the first copy was
    only slow (flagged with REDISPATCH_HEADER). When the ledger row of such a copy has
    already finished, the copy is acknowledged and dropped, so the side effect never
    repeats. A first delivery skips the lookup: it cannot be a copy, and the lookup
    would block the worker's event loop for every task. The claim in the pool process
    (ReliableTask.before_start) remains the guard of last resort for every delivery.
    """

    def revoked(self) -> bool:
        if super().revoked():
            return True
        if not self.may_be_a_copy or not is_final(self.id):
            return False
        logger.info(
            "skipping delivery of a finished task",
            extra={"event": "task_deduplicated", "task_id": self.id, "task_name": self.name},
        )
        task_ready(self)
        self.acknowledge()
        self._already_revoked = True
        return True

    def on_failure(self, exc_info: ExceptionInfo, *args: Any, **kwargs: Any) -> None:
        """A pool process died mid-task (R02): free the claim before the message is requeued.

        The worker itself lives on and keeps its heartbeat, so without this the requeued
        copy would be refused as a copy of a live run (statements.LIVE_CLAIM).
        """
        # Unwrapped from billiard's ExceptionWithTraceback, as Celery does.
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        # billiard may report the lost process as the exit it saw (Celery treats it alike).
        # A revoked row is final, and release() leaves final rows alone.
        if isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt):
            release(self.id)
        super().on_failure(exc_info, *args, **kwargs)

    def cancel(self, pool: Any, signal: Any = None, emit_retry: bool = True) -> None:
        """Celery cancels a late-ack task when the broker connection drops
        (worker_cancel_long_running_tasks_on_connection_loss). Its message comes back, or
        is lost with a failed master: the row goes back to PUBLISHED, free to claim, so a
        returning copy runs at once and a lost one is re-sent by the reconcile job. Kept
        STARTED by this live process, it would hold off the copy and escape the sweep."""
        running = bool(self.time_start)
        # The returning message is the retry. Celery's RETRY write would go to a Redis that
        # is failing over (NOREPLICAS, READONLY), and when it fails Celery leaves the request
        # unflagged: the Terminated its killed child reports then reads as a revoke, and the
        # message is acked, the row REVOKED, the task lost.
        super().cancel(pool, signal, emit_retry=emit_retry and not self.task.acks_late)
        # Flagged even before it started, where Celery flags nothing, yet ends its pool job:
        # that job's Terminated must not read as a revoke either.
        self._already_cancelled = True
        if running:
            requeue(self.id)

    @property
    def may_be_a_copy(self) -> bool:
        return bool(
            self.delivery_info.get("redelivered") or self.request_dict.get(REDISPATCH_HEADER)
        )
