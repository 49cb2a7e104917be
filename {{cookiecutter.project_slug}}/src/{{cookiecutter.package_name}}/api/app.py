"""The FastAPI application (served by gunicorn with uvicorn workers, see gunicorn_conf.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from celery.result import denied_join_result
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from {{ cookiecutter.package_name }}.api.catalog import TaskCatalog
from {{ cookiecutter.package_name }}.api.dispatch import BrokerUnavailable, LedgerUnavailable
from {{ cookiecutter.package_name }}.api.middleware import (
    BodySizeLimitMiddleware,
    RequestContextMiddleware,
)
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
    api = FastAPI(title="{{ cookiecutter.project_name }}", version="0.1.0", lifespan=_lifespan)
    api.state.settings = settings
    api.state.celery = celery_app
    api.state.catalog = TaskCatalog(celery_app, settings.api_task_allowlist)
    api.include_router(tasks.router)
    api.include_router(deadletters.router)
    api.include_router(health.router)
    api.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    api.add_middleware(RequestContextMiddleware)
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


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A dependency is down and nothing was accepted: 503 with the reason."""
    return JSONResponse(
        status_code=503,
        content={"detail": str(exc)},
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


app = create_app()
