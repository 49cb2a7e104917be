"""Flower with its Prometheus page behind the same login as its dashboard and API (R35).

Flower 2.2 serves /metrics to anyone, even with basic auth on (upstream mher/flower#1342):
task names, worker names and rates would leak past the login. This module requires the
logged-in user on that one handler, then runs `celery ... flower` with the arguments it was
given; Prometheus scrapes it with the Flower credentials. /healthcheck stays open for probes.
"""

from __future__ import annotations

import sys

import tornado.web
from celery.bin.celery import main as celery_main
from flower.views.monitor import Metrics


def require_login_for_metrics() -> None:
    """Flower's other pages use tornado's `authenticated`; give /metrics the same guard."""
    if not getattr(Metrics.get, "__wrapped__", None):
        Metrics.get = tornado.web.authenticated(Metrics.get)


if __name__ == "__main__":
    require_login_for_metrics()
    sys.exit(celery_main())
