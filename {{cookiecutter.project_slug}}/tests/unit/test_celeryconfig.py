"""The checklist's configuration rows, read from the configuration module as production loads it."""

from __future__ import annotations

import inspect
import json
import operator
import os
import ssl
import subprocess
import sys
import typing
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import crontab
from celery.schedules import schedule as celery_schedule
from kombu.utils.imports import symbol_by_name

from {{ cookiecutter.package_name }} import celeryconfig
from {{ cookiecutter.package_name }}.celery_app import TASK_MODULES
from {{ cookiecutter.package_name }}.consumer import EVENT_FLUSH_INTERVAL, BatchingConsumer
from {{ cookiecutter.package_name }}.queues import QUEUE_NAMES
from {{ cookiecutter.package_name }}.settings import get_settings
from {{ cookiecutter.package_name }}.tasks.base import ReliableTask
from {{ cookiecutter.package_name }}.tasks.errors import RetryableError

SETTINGS = get_settings()

_on = partial(operator.is_, True)
_off = partial(operator.is_, False)


def _json_only(value: Any) -> bool:
    """Nothing but JSON is read: a pickled message is refused, never run."""
    return list(value) == ["json"]


def _bounded(value: Any) -> bool:
    """A limit is set: Celery's default (None) means no limit at all."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _a_time_zone(value: Any) -> bool:
    return isinstance(value, str) and ZoneInfo(value).key == value


# What each row guarantees, checked on the value the configuration module sets.
CONFIG_ROWS: list[tuple[str, str, Callable[[Any], bool]]] = [
    ("R01", "task_acks_late", _on),
    ("R02", "task_reject_on_worker_lost", _on),
    # One message reserved per free slot: a busy worker hoards nothing.
    ("R03", "worker_prefetch_multiplier", lambda value: value == 1),
    ("R06", "task_serializer", lambda value: value == "json"),
    ("R06", "result_serializer", lambda value: value == "json"),
    ("R06", "accept_content", _json_only),
    ("R06", "result_accept_content", _json_only),
    # A task without a route lands on a queue some worker group consumes.
    ("R09", "task_default_queue", lambda value: value in QUEUE_NAMES),
    ("R09", "task_create_missing_queues", _off),
    ("R16", "task_soft_time_limit", _bounded),
    ("R16", "task_time_limit", _bounded),
    ("R17", "task_publish_retry", _on),
    ("R18", "worker_max_tasks_per_child", _bounded),
    ("R18", "worker_max_memory_per_child", _bounded),
    ("R21", "worker_deduplicate_successful_tasks", _on),
    ("R22", "task_track_started", _on),
    # Results expire (None would keep them forever).
    ("R25", "result_expires", lambda value: value > timedelta(0)),
    ("R25", "task_ignore_result", _off),
    ("R26", "worker_send_task_events", _on),
    ("R26", "task_send_sent_event", _on),
    ("R26", "worker_consumer", lambda value: symbol_by_name(value) is BatchingConsumer),
    ("R27", "timezone", _a_time_zone),
    ("R27", "enable_utc", _on),
    ("R28", "task_always_eager", _off),
    ("R39", "worker_hijack_root_logger", _off),
    ("failover", "broker_channel_error_retry", _on),
    ("failover", "broker_connection_retry_on_startup", _on),
    # Retry forever: a worker never gives up on the broker and exits.
    ("failover", "broker_connection_max_retries", lambda value: value is None),
    ("failover", "worker_cancel_long_running_tasks_on_connection_loss", _on),
    ("failover", "result_backend_always_retry", _on),
]


@pytest.mark.parametrize(
    ("row", "name", "guarantee"), CONFIG_ROWS, ids=[f"{r[0]}-{r[1]}" for r in CONFIG_ROWS]
)
def test_config_row(
    row: str, name: str, guarantee: Callable[[Any], bool], celery_app: Celery
) -> None:
    value = getattr(celeryconfig, name)
    assert guarantee(value), f"{row}: {name} = {value!r}"
    if name not in {"task_always_eager"}:
        # The app really loaded the module (eager mode is only toggled by unit fixtures).
        assert celery_app.conf[name] == value


@pytest.mark.reliability("R04")
def test_visibility_timeout_is_explicit_everywhere_and_shorter_than_default() -> None:
    vt = SETTINGS.visibility_timeout
    assert celeryconfig.broker_transport_options["visibility_timeout"] == vt
    assert celeryconfig.result_backend_transport_options["visibility_timeout"] == vt
    assert celeryconfig.visibility_timeout == vt
    # Shorter than kombu's default hour (the order against the time limit: settings.py).
    assert vt < 3600


@pytest.mark.reliability("R04")
def test_dead_worker_sweep_runs_every_interval() -> None:
    options = celeryconfig.broker_transport_options
    assert options["unacked_restore_throttle"] == 1
    assert options["unacked_restore_interval"] == SETTINGS.unacked_restore_interval


@pytest.mark.reliability("R11")
def test_priorities_are_served_in_order() -> None:
    options = celeryconfig.broker_transport_options
    assert options["priority_steps"] == list(range(10))
    assert options["queue_order_strategy"] == "priority"
    assert 0 < celeryconfig.task_default_priority < 9


@pytest.mark.reliability("R12", "R13")
def test_base_task_retries_transient_errors_with_jittered_backoff() -> None:
    assert RetryableError in ReliableTask.autoretry_for
    assert ReliableTask.retry_backoff == SETTINGS.task_retry_backoff
    assert ReliableTask.retry_backoff_max == SETTINGS.task_retry_backoff_max
    assert ReliableTask.retry_jitter is True
    assert ReliableTask.max_retries == SETTINGS.task_max_retries
    assert ReliableTask.default_retry_delay == SETTINGS.task_default_retry_delay


@pytest.mark.reliability("R17")
def test_publish_retry_policy_outlasts_a_sentinel_failover() -> None:
    policy = celeryconfig.task_publish_retry_policy
    waits, interval = 0.0, float(policy["interval_start"])
    for _ in range(int(policy["max_retries"])):
        waits += min(interval, float(policy["interval_max"]))
        interval += float(policy["interval_step"])
    # Field measurement: sentinels switch in ~3 s after down-after-milliseconds (5 s here).
    assert waits >= 10
    assert policy["max_retries"] >= 10


@pytest.mark.reliability("R17")
def test_result_backend_retries_on_the_publish_budget() -> None:
    policy = celeryconfig.task_publish_retry_policy
    assert celeryconfig.result_backend_max_retries == policy["max_retries"]
    assert celeryconfig.result_backend_max_sleep_between_retries_ms == 1000 * policy["interval_max"]


@pytest.mark.reliability("R19")
def test_producer_pool_is_bounded_for_gevent() -> None:
    assert celeryconfig.broker_pool_limit <= SETTINGS.worker_low_concurrency


{%- if cookiecutter.redis_mode == "sentinel" %}


@pytest.mark.reliability("R31")
def test_broker_and_results_go_through_sentinel_with_auth_and_timeouts() -> None:
    for url in (celeryconfig.broker_url, celeryconfig.result_backend):
        nodes = url.split(";")
        assert len(nodes) == len(SETTINGS.redis_sentinels)
        assert all(node.startswith("sentinel://") for node in nodes)
    for options in (
        celeryconfig.broker_transport_options,
        celeryconfig.result_backend_transport_options,
    ):
        assert options["master_name"] == SETTINGS.redis_master_name
        sentinel_kwargs = options["sentinel_kwargs"]
        # Credentials only through a provider that hides them from worker stats.
        assert "password" not in sentinel_kwargs
        assert sentinel_kwargs["socket_timeout"] == SETTINGS.redis_socket_timeout
        assert options["socket_timeout"] == SETTINGS.redis_socket_timeout
        assert options["health_check_interval"] == SETTINGS.redis_health_check_interval
{%- endif %}


def _our_tasks(app: Celery) -> dict[str, Any]:
    modules = set(TASK_MODULES)
    return {name: task for name, task in app.tasks.items() if task.__module__ in modules}


@pytest.mark.reliability("R08")
def test_every_task_has_an_explicit_name(celery_app: Celery) -> None:
    celery_app.loader.import_default_modules()
    tasks = _our_tasks(celery_app)
    assert tasks, "no task registered from TASK_MODULES"
    for name, task in tasks.items():
        assert name != f"{task.__module__}.{task.run.__name__}", f"{name} uses a generated name"
        assert name.startswith(("demo.", "ledger."))


BASIC_TYPES = {str, int, float, bool, type(None), list, dict}


@pytest.mark.reliability("R07")
def test_task_arguments_are_json_basic_types(celery_app: Celery) -> None:
    celery_app.loader.import_default_modules()
    for name, task in _our_tasks(celery_app).items():
        hints = typing.get_type_hints(task.run)
        for parameter in inspect.signature(task.run).parameters:
            hint = hints[parameter]
            base = typing.get_origin(hint) or hint
            assert base in BASIC_TYPES, f"{name}({parameter}: {hint}) is not a JSON basic type"


@pytest.mark.reliability("R29")
def test_beat_has_an_interval_and_a_crontab_entry_routed_to_their_queues(
    celery_app: Celery,
) -> None:
    schedule = celeryconfig.beat_schedule
    kinds = {type(entry["schedule"]) for entry in schedule.values()}
    assert kinds == {celery_schedule, crontab}
    assert celeryconfig.beat_scheduler.endswith("ledger.beat:LedgerScheduler")
    celery_app.loader.import_default_modules()
    queues = {
        entry["task"]: celery_app.amqp.router.route({}, entry["task"])["queue"].name
        for entry in schedule.values()
    }
    assert queues == {
        "demo.urgent_ping": "high",
        "demo.reports.build_report": "low",
        "ledger.reconcile": "high",
        "ledger.prune": "high",
    }


@pytest.mark.reliability("R26")
def test_task_events_leave_in_one_batch_per_interval() -> None:
    """Many buffered events, one scheduled flush; the next event schedules the next one."""
    consumer = BatchingConsumer.__new__(BatchingConsumer)
    scheduled: list[tuple[float, Callable[[], None]]] = []
    flushes: list[int] = []
    consumer.hub = SimpleNamespace(call_later=lambda delay, flush: scheduled.append((delay, flush)))
    consumer._flush_events = lambda: flushes.append(1)
    for _ in range(5):
        consumer.on_send_event_buffered()
    assert [delay for delay, _ in scheduled] == [EVENT_FLUSH_INTERVAL]
    scheduled[0][1]()
    assert flushes == [1]
    consumer.on_send_event_buffered()
    assert len(scheduled) == 2


# What the broker's and the result backend's connections would be with REDIS_TLS on, read
# from a fresh interpreter (celeryconfig reads the settings once, at import).
_TLS_PROBE = """
import json
from {{ cookiecutter.package_name }}.celery_app import app
from {{ cookiecutter.package_name }} import celeryconfig
channel_class = app.connection_for_write().transport.Channel
backend = app.backend.connparams
sentinel_kwargs = celeryconfig.broker_transport_options.get("sentinel_kwargs", {})
print(json.dumps({
    "broker_ssl": sorted(app.connection_for_write().ssl),
    "broker_connection": channel_class.connection_class_ssl.__name__,
    "backend_connection": backend["connection_class"].__name__,
    "backend_ca": backend.get("ssl_ca_certs"),
    "backend_cert_reqs": int(backend.get("ssl_cert_reqs", -1)),
    "sentinel_ssl": sentinel_kwargs.get("ssl", False),
}))
"""


@pytest.mark.reliability("R50")
def test_redis_tls_reaches_the_broker_the_backend_and_the_sentinels(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("read by the TLS handshake, not here\n")
    env = {
        **os.environ,
        "REDIS_TLS": "true",
        "REDIS_TLS_CA_FILE": str(ca),
        "REDIS_PASSWORD": "",
        "REDIS_SENTINEL_PASSWORD": "",
    }
    probe = subprocess.run(
        [sys.executable, "-c", _TLS_PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert {"ssl_ca_certs", "ssl_cert_reqs"} <= set(seen["broker_ssl"]), seen
    assert "SSL" in seen["broker_connection"], seen
    assert "SSL" in seen["backend_connection"], seen
    assert seen["backend_ca"] == str(ca), seen
    assert seen["backend_cert_reqs"] == ssl.CERT_REQUIRED, seen
{%- if cookiecutter.redis_mode == "sentinel" %}
    assert seen["sentinel_ssl"] is True, seen
{%- endif %}
