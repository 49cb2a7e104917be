"""Sentry for API, workers and beat; nothing at all when SENTRY_DSN is empty (R38).

Every event and transaction passes through `prepare_event` before it leaves: the values
of the service's secrets are cut out wherever they appear, and values under sensitive
names are masked at any depth (redact.py's rule); frames carry no local variables. A
task's errors and transaction are tagged with its id, name, queue, attempt and the id of
the API request that submitted it; an API error with the id of its request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit

import sentry_sdk
from celery import signals
from pydantic import SecretStr
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.types import Event, Hint

from {{ cookiecutter.package_name }}.observability.logging import request_id_var
from {{ cookiecutter.package_name }}.observability.redact import SENSITIVE_KEY, redact
from {{ cookiecutter.package_name }}.settings import Settings, get_settings

FILTERED = "[Filtered]"
# Shorter secret values are not searched for in text: they would cut up ordinary words.
MIN_SECRET_LENGTH = 4
# At exit, queued events get this long to go out: an unreachable Sentry delays a
# shutdown by no more (the SDK's default, stated because the shutdown budget counts on it).
SHUTDOWN_TIMEOUT = 2.0
# ReliableTask.on_failure logs the failure the Celery integration already reports with
# its traceback: as an event of its own it would double every task error.
TASK_HOOKS_LOGGER = "{{ cookiecutter.package_name }}.tasks.base"


def init_sentry(settings: Settings, component: str) -> bool:
    """Initialise the SDK once per process; returns whether reporting is on."""
    dsn = settings.sentry_dsn.get_secret_value()
    if not dsn:
        return False
    secrets = secret_values(settings)

    def before_send(event: Event, hint: Hint) -> Event | None:
        if event.get("logger") == TASK_HOOKS_LOGGER and "exception" not in event:
            return None
        return _prepared(event, secrets)

    def before_send_transaction(event: Event, hint: Hint) -> Event | None:
        return _prepared(event, secrets)

    sentry_sdk.init(
        dsn=dsn,
        environment=settings.environment,
        traces_sample_rate=settings.sentry_traces_sample_rate,
        # No cookies, client IPs, auth headers or task arguments from the SDK itself;
        # prepare_event masks what else may carry a secret.
        send_default_pii=False,
        # Frame locals hold headers, credentials and arguments in forms no scrubbing can
        # recognise (reprs of FastAPI's dependency cache, ASGI scopes, Celery requests).
        include_local_variables=False,
        before_send=before_send,
        before_send_transaction=before_send_transaction,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        # Beat tasks become Sentry cron monitors: a missed or failed run alerts.
        integrations=[CeleryIntegration(monitor_beat_tasks=True)],
    )
    sentry_sdk.set_tag("component", component)
    sentry_sdk.set_tag("service", settings.service_name)
    signals.task_prerun.connect(_tag_task, weak=False)
    return True


def connect() -> None:
    """Initialise Sentry in each worker and beat process as it starts (no-op without a DSN)."""
    signals.celeryd_init.connect(_init_worker, weak=False)
    signals.beat_init.connect(_init_beat, weak=False)


def _init_worker(**_: Any) -> None:
    """R38: task failures and traces from workers."""
    init_sentry(get_settings(), "worker")


def _init_beat(**_: Any) -> None:
    """R38: beat's check-ins and errors."""
    init_sentry(get_settings(), "beat")


def _tag_task(task: Any, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    """The Celery integration opens a scope per run: its errors and transaction get these,
    and the arguments as the logs show them (redact.py)."""
    sentry_sdk.set_tags(task_context(task.request, task.name))
    sentry_sdk.set_context("task", {"arguments": redact({"args": args, "kwargs": kwargs})})


def _prepared(event: Event, secrets: frozenset[str]) -> Event:
    api_request_id = request_id_var.get()  # set while the API serves a request
    tags = {"request_id": api_request_id} if api_request_id else {}
    return cast(Event, prepare_event(cast(dict[str, Any], event), secrets, tags))


def prepare_event(
    event: dict[str, Any], secrets: Iterable[str], tags: Mapping[str, str]
) -> dict[str, Any]:
    """The event with `tags` added, sensitive keys masked and secret values cut out."""
    event.setdefault("tags", {})
    if isinstance(event["tags"], dict):
        event["tags"].update(tags)
    longest_first = sorted(set(secrets), key=len, reverse=True)
    scrubbed: dict[str, Any] = scrub(event, lambda text: _cut(text, longest_first))
    return scrubbed


def scrub(value: Any, clean_text: Callable[[str], str]) -> Any:
    """Mask every value whose key looks sensitive, at any depth; clean every string.

    A key is a dict key, the first of a pair (an ASGI scope's headers are a list of
    [name, value] pairs) or a name in text (`'api_token': '...'` in a repr, `password=...`).
    """
    if isinstance(value, dict):
        return {
            key: FILTERED
            if SENSITIVE_KEY.search(str(key)) and value[key] not in (None, "", {}, [])
            else scrub(value[key], clean_text)
            for key in value
        }
    if isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str) and SENSITIVE_KEY.search(value[0]):
            return [clean_text(value[0]), FILTERED]
        return [scrub(item, clean_text) for item in value]
    if isinstance(value, str):
        return clean_text(value)
    return value


# A sensitive name, then ":" or "=", then a quoted value or a bare word (after an
# optional auth scheme): a dict's repr, a header line, a connection string.
_NAMED_VALUE = re.compile(
    rf"(?P<head>[\w.-]*(?:{SENSITIVE_KEY.pattern})[\w.-]*['\"]?\s*[:=]\s*"
    r"(?:(?:Bearer|Basic|Token)\s+)?)"
    r"(?:(?P<quote>['\"])(?:\\.|(?!(?P=quote)).)*(?P=quote)|[^\s,;&'\"{}()\[\]]+)",
    re.IGNORECASE,
)


def _masked_match(match: re.Match[str]) -> str:
    quote_char = match.group("quote") or ""
    return f"{match.group('head')}{quote_char}{FILTERED}{quote_char}"


def _cut(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, FILTERED)
    return _NAMED_VALUE.sub(_masked_match, text)


def secret_values(settings: Settings) -> frozenset[str]:
    """Every secret setting's value, and the password inside any URL-shaped one, in the
    forms it may be written in (as given, percent-decoded, percent-encoded)."""
    found: set[str] = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if not isinstance(value, SecretStr):
            continue
        text = value.get_secret_value()
        found.add(text)
        for url in text.split(";"):
            try:
                password = urlsplit(url.strip()).password
            except ValueError:
                continue
            if password:
                found.update({password, unquote(password), quote(unquote(password), safe="")})
    return frozenset(value for value in found if len(value) >= MIN_SECRET_LENGTH)


def task_context(request: Any, name: str | None) -> dict[str, str]:
    """Tags for an event raised while a task runs (none outside a task)."""
    task_id = getattr(request, "id", None)
    if request is None or task_id is None:
        return {}
    delivery = getattr(request, "delivery_info", None) or {}
    retries = getattr(request, "retries", None) or 0
    tags = {
        "task_id": str(task_id),
        "task_name": name or getattr(request, "task", None),
        "queue": delivery.get("routing_key"),
        # 1 for the first run: Celery's retry count plus one.
        "attempt": str(int(retries) + 1),
        # The API sends its request id along in the task's headers (ledger/publish.py).
        "request_id": getattr(request, "request_id", None),
    }
    return {key: str(value) for key, value in tags.items() if value}
