"""Admission control: how much the API takes in, decided before anything is written.

Two gates, each answering with `Retry-After` and a reason, neither losing anything (a
refused request left no row and no message; an accepted one is never refused later):

- the caller's rate limit (429), counted in Redis so every API process shares it;
- the backlog of the task's queue (503): past API_MAX_BACKLOG_<QUEUE> waiting messages the
  queue takes no more, so a stopped worker group cannot fill Redis' memory.

Both read Redis through the result backend's connection pool (its auth, timeouts and
Sentinel failover). If Redis cannot answer, the gates stay open: the submit itself then
keeps the task QUEUED in the ledger, which is the outage path that loses nothing.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from celery import Celery
from fastapi import HTTPException, status
from limits import parse
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import SlidingWindowCounterRateLimiter

from {{ cookiecutter.package_name }}.api.metrics import SUBMISSIONS_REFUSED
from {{ cookiecutter.package_name }}.broker_errors import BROKER_ERRORS
from {{ cookiecutter.package_name }}.settings import Settings

logger = logging.getLogger(__name__)

# How long a client is asked to wait when its queue is full (workers drain it meanwhile).
BACKLOG_RETRY_AFTER_SECONDS = 10


class RateLimit:
    """API_RATE_LIMIT per caller, as a sliding window over Redis (one script call)."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._limit = parse(settings.api_rate_limit)
        pool = getattr(getattr(app.backend, "client", None), "connection_pool", None)
        storage: Storage = (
            RedisStorage("redis://", connection_pool=pool, wrap_exceptions=True)
            if pool is not None
            else MemoryStorage()  # an in-process result backend (the unit tier)
        )
        self._limiter = SlidingWindowCounterRateLimiter(storage)

    def admit(self, caller: str) -> None:
        try:
            if self._limiter.hit(self._limit, caller):
                return
            reset = self._limiter.get_window_stats(self._limit, caller).reset_time
        except StorageError as exc:
            logger.warning("rate limit not checked: redis unreachable", extra={"reason": str(exc)})
            return
        SUBMISSIONS_REFUSED.labels("rate_limited", "").inc()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"{caller} is over its rate limit of {self._limit}",
            headers={"Retry-After": str(max(1, math.ceil(reset - time.time())))},
        )


class Backlog:
    """Refuses a submission whose queue already holds its bound of waiting messages."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._bounds: dict[str, int] = {q: n for q, n in settings.api_max_backlogs.items()}

    def admit(self, queue: str) -> None:
        bound = self._bounds.get(queue, 0)
        if not bound:
            return
        waiting = self.waiting(queue)
        if waiting is None or waiting < bound:
            return
        SUBMISSIONS_REFUSED.labels("backlog", queue).inc()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=(
                f"queue {queue} is full: {waiting} tasks wait (API_MAX_BACKLOG_{queue.upper()}"
                f"={bound}); nothing was queued, try again later"
            ),
            headers={"Retry-After": str(BACKLOG_RETRY_AFTER_SECONDS)},
        )

    def waiting(self, queue: str) -> int | None:
        """Messages in the queue, every priority level counted; None if Redis is down."""
        try:
            with self._app.producer_pool.acquire(block=True) as producer:
                channel: Any = producer.channel  # kombu's Redis channel; its count is untyped
                # kombu's own count: one pipeline of LLENs, one per priority list.
                return int(channel._size(queue))
        except BROKER_ERRORS as exc:
            logger.warning("backlog not checked: broker unreachable", extra={"reason": str(exc)})
            return None
