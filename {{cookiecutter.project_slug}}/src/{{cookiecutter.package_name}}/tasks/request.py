"""The worker-side request class: a delivery of a finished task is acked, never run (R21)."""

from __future__ import annotations

import logging

from celery.worker.request import Request
from celery.worker.state import task_ready

from {{ cookiecutter.package_name }}.ledger.tracking import is_final

logger = logging.getLogger(__name__)


class LedgerRequest(Request):
    """Checked in the worker before the task reaches the pool (and before STARTED is stored).

    A message can arrive twice: redelivered after a failover, or re-sent by the
    reconcile job while the first copy was only slow. When the ledger row already
    finished, the copy is acknowledged and dropped, so the side effect never repeats.
    """

    def revoked(self) -> bool:
        if super().revoked():
            return True
        if not is_final(self.id):
            return False
        logger.info(
            "skipping delivery of a finished task",
            extra={"event": "task_deduplicated", "task_id": self.id, "task_name": self.name},
        )
        task_ready(self)
        self.acknowledge()
        self._already_revoked = True
        return True
