"""Liveness, readiness and metrics endpoints (outside /api/v1: they serve the platform)."""

from __future__ import annotations

from celery import Celery
from celery.backends.redis import RedisBackend
from fastapi import APIRouter, Response, status
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from {{ cookiecutter.package_name }}.api.deps import CeleryDep, SettingsDep
from {{ cookiecutter.package_name }}.api.metrics import render
from {{ cookiecutter.package_name }}.broker_errors import BROKER_ERRORS
from {{ cookiecutter.package_name }}.ledger.db import session_scope

router = APIRouter(tags=["health"])
# Called by the platform (probes, scrapers) by pod address: any Host header is taken.
PLATFORM_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers; no dependency is consulted."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable"}})
def readyz(app: CeleryDep, settings: SettingsDep, response: Response) -> dict[str, str]:
    """Readiness: broker, result backend and ledger database answer within the timeout."""
    checks = {
        "broker": _check_broker(app, settings.api_readiness_timeout),
        "result_backend": _check_backend(app),
        "database": _check_database(),
    }
    if any(outcome != "ok" for outcome in checks.values()):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return checks


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    body, content_type = render()
    return Response(content=body, media_type=content_type)


def _check_broker(app: Celery, timeout: int) -> str:
    try:
        # Opening a Redis channel PINGs the master (through Sentinel when configured).
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except BROKER_ERRORS as exc:
        return f"unreachable: {type(exc).__name__}: {exc}"
    return "ok"


def _check_database() -> str:
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


def _check_backend(app: Celery) -> str:
    backend = app.backend
    if not isinstance(backend, RedisBackend):  # e.g. the in-memory backend of unit tests
        return "ok"
    try:
        backend.client.ping()
    except BROKER_ERRORS as exc:
        return f"unreachable: {type(exc).__name__}: {exc}"
    return "ok"
