"""The queue topology in one screen: which queues exist and which tasks go where (R09, R10)."""

from __future__ import annotations

from typing import Literal, get_args

from kombu import Exchange, Queue

# The queues worker groups consume, one group each: the one list of them. Settings, the
# API's `queue` field, the launcher's groups and the tests all derive theirs from it.
QueueName = Literal["high", "default", "low"]
QUEUE_NAMES: tuple[QueueName, ...] = get_args(QueueName)
DEFAULT_QUEUE = "default"
# R14: final failures are parked here; no worker group consumes it.
DEAD_QUEUE = "dead"

# Each queue gets its own direct exchange and a routing key equal to its name: a Queue
# declared without one is bound with key "default" and would swallow default traffic.
TASK_QUEUES = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name)
    for name in (*QUEUE_NAMES, DEAD_QUEUE)
)

# Routes by exact task name first, then by module glob; anything else goes to "default".
TASK_ROUTES = {
    "demo.urgent_ping": {"queue": "high"},
    "demo.reports.*": {"queue": "low"},
    # Operational tasks must not wait behind a backlog of ordinary work.
    "ledger.*": {"queue": "high"},
}

# Which queues an API client may choose for a task instead of its route (patterns as in
# TASK_ROUTES). Nothing else moves: ordinary work must not jump onto `high`, beside the
# reconcile jobs. The demo tasks may go anywhere, so the tests can load every queue.
API_QUEUE_CHOICES = {
    "demo.*": QUEUE_NAMES,
}
