"""Every Celery setting the service relies on, each with its reason and checklist ID.

IDs refer to docs/RELIABILITY.md. Values that operators tune come from settings.py;
the rest are fixed because the guarantees depend on them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from {{ cookiecutter.package_name }}.queues import DEFAULT_QUEUE, TASK_QUEUES, TASK_ROUTES
from {{ cookiecutter.package_name }}.redis_credentials import HiddenCredentials
from {{ cookiecutter.package_name }}.schedule import build_beat_schedule
from {{ cookiecutter.package_name }}.settings import get_settings

_settings = get_settings()


def _redis_connection_options() -> dict[str, Any]:
    """Transport options shared by broker and result backend (R04, R31, failover notes)."""
    socket_options = {
        # Half-open sockets after a failover must time out instead of hanging forever.
        "socket_timeout": _settings.redis_socket_timeout,
        "socket_connect_timeout": _settings.redis_socket_connect_timeout,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        # Ping idle connections so a dead master is detected between commands.
        "health_check_interval": _settings.redis_health_check_interval,
    }
    options: dict[str, Any] = {
        **socket_options,
        # R04: redeliver a task whose worker vanished after this many seconds, not 1 h.
        "visibility_timeout": _settings.visibility_timeout,
    }
    if _settings.redis_mode == "sentinel":
        # R31: which Sentinel-monitored master to follow.
        options["master_name"] = _settings.redis_master_name
        # R31: Sentinel auth; redis-py stops copying socket_* options to sentinel
        # connections once sentinel_kwargs is given, so they are repeated here.
        options["sentinel_kwargs"] = {**socket_options, **_sentinel_tls()}
        password = _settings.redis_sentinel_password.get_secret_value()
        if password or _settings.redis_sentinel_username:
            # A provider, not a password: worker stats show transport options in clear.
            options["sentinel_kwargs"]["credential_provider"] = HiddenCredentials(
                _settings.redis_sentinel_username, password
            )
    return options


def _sentinel_tls() -> dict[str, Any]:
    """REDIS_TLS: the sentinels are asked over TLS too, verified like the Redis nodes."""
    options = _settings.redis_tls_options()
    return {"ssl": True, **options} if options else {}


# --- Broker and result backend: Redis through Sentinel (R31) ----------------------------
broker_url = _settings.broker_url
result_backend = _settings.result_backend_url
# R50: REDIS_TLS puts every connection to a Redis node on TLS, server verified (settings.py).
broker_use_ssl = _settings.redis_tls_options() or False
redis_backend_use_ssl = _settings.redis_tls_options() or None
# R22: each result written in one round trip that never overwrites a SUCCESS (results.py).
override_backends = {
    "redis": "{{ cookiecutter.package_name }}.results:OneTripRedisBackend",
    "rediss": "{{ cookiecutter.package_name }}.results:OneTripRedisBackend",
    "sentinel": "{{ cookiecutter.package_name }}.results:OneTripSentinelBackend",
}

broker_transport_options = {
    **_redis_connection_options(),
    # Sweep for messages of dead workers every interval (kombu's default waits 10 x 10 s).
    "unacked_restore_interval": _settings.unacked_restore_interval,
    "unacked_restore_throttle": 1,
    # R11: ten priority levels per queue (0 = most urgent on Redis), served in order.
    "priority_steps": list(range(10)),
    "queue_order_strategy": "priority",
}
result_backend_transport_options = _redis_connection_options()
# R04: the visibility timeout stated once more at app level, where Celery's docs ask for it.
visibility_timeout = _settings.visibility_timeout

# Keep retrying the broker forever: a worker must outlive any Redis outage.
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
# A ReadOnlyError from a just-demoted master is a channel error: reconnect, don't die.
broker_channel_error_retry = True
# Bounded so a gevent worker shares ten producer connections instead of one per greenlet (R19).
broker_pool_limit = _settings.broker_pool_limit

# Result backend reads/writes retry through a failover instead of failing the task, with
# the same budget as a publish (R17): as many tries, sleeps capped alike.
result_backend_always_retry = True
result_backend_max_retries = _settings.publish_retry_max_retries
result_backend_max_sleep_between_retries_ms = int(_settings.publish_retry_interval_max * 1000)
redis_socket_timeout = _settings.redis_socket_timeout
redis_socket_connect_timeout = _settings.redis_socket_connect_timeout
redis_retry_on_timeout = True
redis_socket_keepalive = True
redis_backend_health_check_interval = _settings.redis_health_check_interval

# --- Publishing (R17) ------------------------------------------------------------------
# R17: retry a publish through a Sentinel failover (each sentinel in the URL list uses a
# retry; ~20 tries of up to 1 s cover detection + promotion of the replica).
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": _settings.publish_retry_max_retries,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": _settings.publish_retry_interval_max,
}

# --- Acknowledgement and redelivery (R01-R04, R21) --------------------------------------
# R01: ack after the task finishes, so a crash mid-task leaves the message to redeliver.
task_acks_late = True
# R02: a prefork child killed mid-task (OOM, SIGKILL) requeues the message at once.
task_reject_on_worker_lost = True
# A requeue on worker loss is immediate, not a counted retry with a delay (R02).
task_retry_on_worker_lost = False
# R03: reserve one message per slot, so idle workers can take what a busy one would hoard.
worker_prefetch_multiplier = 1
# R21: a redelivered message whose result is already SUCCESS is skipped, not re-run.
worker_deduplicate_successful_tasks = True
# On broker connection loss, cancel running tasks: they will be redelivered anyway, and
# finishing them too would run the same task twice in parallel (LedgerRequest.cancel frees
# their ledger rows for the copy, or for reconcile if the message died with the master).
worker_cancel_long_running_tasks_on_connection_loss = True

# --- Serialisation (R06, R07) -----------------------------------------------------------
# R06: JSON only; a pickle message is refused by the worker and never deserialised.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# --- Queues and routing (R09, R10, R11) -------------------------------------------------
# R09: the three queues are declared, "default" catches unrouted tasks.
task_queues = TASK_QUEUES
task_default_queue = DEFAULT_QUEUE
task_default_exchange = DEFAULT_QUEUE
task_default_routing_key = DEFAULT_QUEUE
# R09: a typo in a queue name raises instead of silently creating a queue nobody consumes.
task_create_missing_queues = False
# R10: routes by task name and by module glob (queues.py).
task_routes = TASK_ROUTES
# R11: a task without an explicit priority sits in the middle of the 0-9 range.
task_default_priority = 5

# --- Retries and limits (R12, R16, R18) -------------------------------------------------
# R12: delay before a manual self.retry() without countdown.
task_default_retry_delay = _settings.task_default_retry_delay
# R16: the soft limit raises SoftTimeLimitExceeded in the task (cleanup time) ...
task_soft_time_limit = _settings.task_soft_time_limit
# ... and the hard limit kills the child if cleanup overruns.
task_time_limit = _settings.task_time_limit
# R18: recycle prefork children to bound leaks (ignored by gevent).
worker_max_tasks_per_child = _settings.worker_max_tasks_per_child
worker_max_memory_per_child = _settings.worker_max_memory_per_child_kib

# --- State, results, events (R22, R25, R26) ---------------------------------------------
# R22: STARTED becomes visible, so the API can tell running from queued.
task_track_started = True
# R25: results live 3 days by default, then Redis frees them.
result_expires = timedelta(seconds=_settings.result_expires)
# R25: results are kept unless a task opts out with ignore_result=True.
task_ignore_result = False
# R26: workers emit task events (monitoring tools read them) ...
worker_send_task_events = True
# ... and producers emit task-sent, so queued work is visible too.
task_send_sent_event = True
# R26: events are sent in batches every 100 ms instead of one publish each (consumer.py).
worker_consumer = "{{ cookiecutter.package_name }}.consumer:BatchingConsumer"
# Event queues of monitors that went away are deleted instead of growing forever.
event_queue_expires = 60.0
event_queue_ttl = 5.0

# --- Shutdown (R20) ---------------------------------------------------------------------
# R20: on a cold shutdown, give running tasks this long before requeueing them.
worker_soft_shutdown_timeout = _settings.worker_soft_shutdown_timeout

# --- Time (R27) -------------------------------------------------------------------------
# R27: one explicit time zone for crontab entries; timestamps stay UTC.
timezone = "{{ cookiecutter.timezone }}"
enable_utc = True

# --- Execution mode (R28) ---------------------------------------------------------------
# R28: tasks always go through the broker; only unit tests switch eager mode on.
task_always_eager = False
task_eager_propagates = False

# --- Logging (R39) ----------------------------------------------------------------------
# R39: our setup_logging handler owns the root logger; Celery must not replace it.
worker_hijack_root_logger = False

# --- Beat (R29, R30) --------------------------------------------------------------------
# R30: the schedule lives in the database; R29: one beat at a time holds the lease.
beat_scheduler = "{{ cookiecutter.package_name }}.ledger.beat:LedgerScheduler"
# R29: the default entries (seeded into the table on first start).
beat_schedule = build_beat_schedule(_settings)
# Wake at least this often: renew the lease, notice edited rows.
beat_max_loop_interval = _settings.beat_reload_interval
