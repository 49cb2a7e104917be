# celery-types does not describe EventDispatcher's internals used below.
# mypy: disable-error-code="no-untyped-call,attr-defined"
"""Producers' task-sent events leave in batches, not one publish each (R26).

With `task_send_sent_event` on, every `send_task` publishes the message and then its
task-sent event: two Redis round trips per task, the second one a sixth of what a
submission through the API costs. `SentEvents` takes the event instead and publishes what
has gathered at most every FLUSH_INTERVAL seconds, as one `task.multi` message that event
monitors unpack, as they do the worker's batches (consumer.py). Monitors see a task-sent
event that much later; events still waiting when a process is killed are lost, like any
event sent to a monitor that is not listening. The task message itself is never delayed.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.events.dispatcher import EventDispatcher
from celery.events.event import Event

logger = logging.getLogger(__name__)

# The most a task-sent event waits: far below any monitor's refresh rate.
FLUSH_INTERVAL = 0.1


class SentEvents(EventDispatcher):
    """Passed to `send_task` as its `event_dispatcher`: buffers, then flushes on a timer."""

    def __init__(self, app: Celery) -> None:
        # Not enabled: it never opens a connection of its own; flushes borrow a producer.
        # Not buffered while offline either: a failed flush is dropped, not kept forever.
        super().__init__(app=app, enabled=False, buffer_while_offline=False)
        self.celery = app
        self._reset()
        atexit.register(self.flush_batch)

    def _reset(self) -> None:
        self._owner = self.pid = os.getpid()
        self._lock = threading.Lock()
        self._batch: list[dict[str, Any]] = []
        self._timer: threading.Timer | None = None

    def publish(
        self,
        type: str,
        fields: dict[str, Any],
        producer: Any,
        blind: bool = False,
        Event: Callable[..., dict[str, Any]] = Event,  # noqa: N803 - Celery's signature
        **kwargs: Any,
    ) -> None:
        """Celery's call for each task-sent event: keep it for the next flush."""
        if self._owner != os.getpid():  # a forked child: nothing of the parent's is ours
            self._reset()
        event = self._prepare_event(type, fields, blind=blind, Event=Event)
        with self._lock:
            self._batch.append(event)
            if self._timer is None:
                self._timer = threading.Timer(FLUSH_INTERVAL, self.flush_batch)
                self._timer.daemon = True
                self._timer.start()

    def flush_batch(self) -> None:
        """Publish every buffered event as one message (also at exit)."""
        with self._lock:
            events, timer = self._batch, self._timer
            self._batch, self._timer = [], None
        if timer is not None:
            timer.cancel()  # a flush by hand: the pending one would cut the next batch short
        if not events or self._owner != os.getpid():
            return
        try:
            with self.celery.producer_or_acquire() as producer:
                self._publish(events, producer, "task.multi")
        # A timer thread has nobody to raise to, and these events only feed monitors:
        # whatever the broker raised, the batch is dropped and said so.
        except Exception as exc:
            logger.warning(
                "task-sent events dropped: broker unavailable",
                extra={"events": len(events), "error": str(exc)},
            )


_dispatchers: dict[int, SentEvents] = {}


def sent_events(app: Celery) -> SentEvents:
    """The app's one buffering dispatcher."""
    found = _dispatchers.get(id(app))
    if found is None:
        found = _dispatchers[id(app)] = SentEvents(app)
    return found
