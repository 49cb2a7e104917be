"""The FastAPI application (served by gunicorn with uvicorn workers, see gunicorn_conf.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from celery.result import denied_join_result
from fastapi import FastAPI, Request

from {{ cookiecutter.package_name }}.api.admission import Backlog, RateLimit
from {{ cookiecutter.package_name }}.api.auth import Authenticator
from {{ cookiecutter.package_name }}.api.catalog import TaskCatalog
from {{ cookiecutter.package_name }}.api.dispatch import BrokerUnavailable, LedgerUnavailable
from {{ cookiecutter.package_name }}.api.docs import add_docs
from {{ cookiecutter.package_name }}.api.errors import COMMON_RESPONSES, add_error_handlers
from {{ cookiecutter.package_name }}.api.middleware import (
    BodySizeLimitMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
    StrictJsonMiddleware,
    TrustedHostMiddleware,
)
from {{ cookiecutter.package_name }}.api.responses import ErrorResponse
from {{ cookiecutter.package_name }}.api.routers import deadletters, health, tasks
from {{ cookiecutter.package_name }}.celery_app import app as celery_app
from {{ cookiecutter.package_name }}.observability.logging import configure_logging
{%- if cookiecutter.use_sentry == "yes" %}
from {{ cookiecutter.package_name }}.observability.sentry import init_sentry
{%- endif %}
from {{ cookiecutter.package_name }}.settings import Settings, get_settings

RETRY_AFTER_SECONDS = "5"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings, "api")
{%- if cookiecutter.use_sentry == "yes" %}
    init_sentry(settings, "api")
{%- endif %}
    api = FastAPI(
        title="{{ cookiecutter.project_name }}",
        version="0.1.0",
        lifespan=_lifespan,
        responses=COMMON_RESPONSES,
        # Swagger UI comes from docs.py (no CDN); ReDoc is not served.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    api.state.settings = settings
    api.state.celery = celery_app
    api.state.catalog = TaskCatalog(celery_app, settings.api_task_allowlist)
    api.state.authenticator = Authenticator(settings)
    api.state.rate_limit = RateLimit(celery_app, settings)
    api.state.backlog = Backlog(celery_app, settings)
    api.include_router(tasks.router)
    api.include_router(deadletters.router)
    api.include_router(health.router)
    if settings.api_docs:
        add_docs(api)
    # Added innermost first: the request context sees (and counts) every answer.
    api.add_middleware(StrictJsonMiddleware)
    api.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    api.add_middleware(
        TrustedHostMiddleware,
        allowed_hosts=settings.api_trusted_hosts,
        exempt_paths=health.PLATFORM_PATHS,
    )
    api.add_middleware(SecurityHeadersMiddleware)
    api.add_middleware(RequestContextMiddleware)
    add_error_handlers(api)
    api.add_exception_handler(BrokerUnavailable, _unavailable)
    api.add_exception_handler(LedgerUnavailable, _unavailable)
    return api


@asynccontextmanager
async def _lifespan(api: FastAPI) -> AsyncIterator[None]:
    """The API reads task state by GET and never waits on a result, so it says so.

    Otherwise every publish first subscribes to the task's result channel, outside the
    publish retry policy, and a Sentinel failover turns that subscription into a 503.
    """
    with denied_join_result():
        yield


async def _unavailable(request: Request, exc: Exception) -> ErrorResponse:
    """A dependency is down and nothing was accepted: 503 with the reason."""
    return ErrorResponse.of(request.scope, 503, str(exc), {"Retry-After": RETRY_AFTER_SECONDS})


app = create_app()
