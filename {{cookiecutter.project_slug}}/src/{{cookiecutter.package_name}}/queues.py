"""The queue topology in one screen: which queues exist and which tasks go where (R09, R10)."""

from __future__ import annotations

from kombu import Exchange, Queue

QUEUE_NAMES = ("high", "default", "low")
DEFAULT_QUEUE = "default"

# Each queue gets its own direct exchange and a routing key equal to its name: a Queue
# declared without one is bound with key "default" and would swallow default traffic.
TASK_QUEUES = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUE_NAMES
)

# Routes by exact task name first, then by module glob; anything else goes to "default".
TASK_ROUTES = {
    "demo.urgent_ping": {"queue": "high"},
    "demo.reports.*": {"queue": "low"},
}
