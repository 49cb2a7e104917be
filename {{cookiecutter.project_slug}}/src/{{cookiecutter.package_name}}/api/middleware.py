"""ASGI middleware: request id, access log and metrics; security headers; trusted hosts;
the request body's size limit and its strict JSON check."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Collection
from typing import cast

from sqlalchemy import String
from starlette.datastructures import Headers
from starlette.middleware import trustedhost
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from {{ cookiecutter.package_name }}.api.metrics import HTTP_LATENCY, HTTP_REQUESTS, method_label
from {{ cookiecutter.package_name }}.api.responses import ErrorResponse
from {{ cookiecutter.package_name }}.ledger.models import TaskRecord
from {{ cookiecutter.package_name }}.observability.logging import request_id_var

logger = logging.getLogger("{{ cookiecutter.package_name }}.api.access")

# A client's X-Request-ID goes into logs, the ledger and task headers: only a short token
# of safe characters is taken (as long as the ledger column), anything else gets a new id.
REQUEST_ID_CHARS = re.compile(r"[A-Za-z0-9._-]+")
REQUEST_ID_MAX_LENGTH = cast(String, TaskRecord.__table__.c.request_id.type).length or 0
# The status counted and logged for a request whose client went away before any answer
# (nginx's convention): a disconnect is not a server error.
CLIENT_CLOSED = 499
# On every answer unless the route set its own (the docs page sets its own policy).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


def _request_id(scope: Scope) -> str:
    incoming = Headers(scope=scope).get("x-request-id", "")
    safe = len(incoming) <= REQUEST_ID_MAX_LENGTH and REQUEST_ID_CHARS.fullmatch(incoming)
    return incoming if safe else uuid.uuid4().hex


class RequestContextMiddleware:
    """Give each request an id (X-Request-ID in and out), log it and count it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        # request.state.request_id: error answers carry it (responses.py).
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        status: int | None = None
        disconnected = False
        started = time.perf_counter()

        async def receive_noting_disconnect() -> Message:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra_header = (b"x-request-id", request_id.encode())
                message["headers"] = [*message.get("headers", []), extra_header]
            await send(message)

        try:
            await self.app(scope, receive_noting_disconnect, send_with_id)
        finally:
            if status is None:
                # No answer started: the client left, or an error the 500 handler answers.
                status = CLIENT_CLOSED if disconnected else 500
            elapsed = time.perf_counter() - started
            method = method_label(scope["method"])
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(elapsed)
            logger.info(
                "request",
                extra={
                    "method": method,
                    "path": scope["path"],
                    "status": status,
                    "duration_seconds": round(elapsed, 6),
                },
            )
            request_id_var.reset(token)


class SecurityHeadersMiddleware:
    """Add SECURITY_HEADERS to every answer that does not carry its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [
            (name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [item for item in self.headers if item[0] not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TrustedHostMiddleware(trustedhost.TrustedHostMiddleware):
    """Starlette's Host check (400 otherwise): the host ends up in Location and status_url.

    The platform's own endpoints (probes, scrapes) are exempt: a kubelet or Prometheus
    addresses a pod by its IP, and these answers never repeat the host.
    """

    def __init__(
        self, app: ASGIApp, allowed_hosts: Collection[str], exempt_paths: Collection[str]
    ) -> None:
        super().__init__(app, allowed_hosts=list(allowed_hosts), www_redirect=False)
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class BodySizeLimitMiddleware:
    """Answer 413 as soon as a request body exceeds `max_bytes`, declared or streamed.

    The body is buffered (it is small by definition) and replayed to the application,
    so a chunked upload without Content-Length is bounded too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, receive, send)
            return
        body = bytearray()
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            more_body = message.get("more_body", False)
        # For StrictJsonMiddleware (request.state.body), which needs the whole body too.
        scope.setdefault("state", {})["body"] = bytes(body)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body larger than {self.max_bytes} bytes (or no valid length)"
        await ErrorResponse.of(scope, 413, detail)(scope, receive, send)


class StrictJsonMiddleware:
    """Take a request body only as strict JSON (RFC 8259, I-JSON strings), or answer why not.

    415 for a body that is not declared JSON, 400 for one that is not UTF-8 or holds
    NaN, Infinity, a number beyond a float's range or a lone surrogate: Python's parser
    takes these, but no answer, log or ledger row could carry them. Syntax errors are
    left to FastAPI (422 with the position). Runs inside BodySizeLimitMiddleware, which
    keeps the buffered body in the scope.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body: bytes = scope.get("state", {}).get("body", b"") if scope["type"] == "http" else b""
        if body:
            problem = _strict_json_problem(Headers(scope=scope).get("content-type"), body)
            if problem is not None:
                status, detail = problem
                await ErrorResponse.of(scope, status, detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_json(content_type: str | None) -> bool:
    """application/json or application/*+json, as FastAPI reads a body."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _strict_json_problem(content_type: str | None, body: bytes) -> tuple[int, str] | None:
    if not _is_json(content_type):
        return 415, f"a request body must be application/json, not {content_type or 'untyped'}"
    try:
        document = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
        json.dumps(document, ensure_ascii=False).encode()
    except json.JSONDecodeError:
        return None
    except UnicodeError:
        return 400, "the request body is not UTF-8, or a string holds a lone surrogate"
    except ValueError as exc:
        return 400, f"the request body is not strict JSON: {exc}"
    return None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:32]} is beyond the range of a float")
    return value
