"""Typed route dependencies on what app.py keeps in `app.state`: the one place routers read it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, Request

from {{ cookiecutter.package_name }}.api.admission import Backlog
from {{ cookiecutter.package_name }}.api.catalog import TaskCatalog
from {{ cookiecutter.package_name }}.settings import Settings


def app_state(name: str) -> Callable[[Request], Any]:
    """A dependency that reads `app.state.<name>`."""

    def read(request: Request) -> Any:
        return getattr(request.app.state, name)

    return read


CeleryDep = Annotated[Celery, Depends(app_state("celery"))]
CatalogDep = Annotated[TaskCatalog, Depends(app_state("catalog"))]
SettingsDep = Annotated[Settings, Depends(app_state("settings"))]
BacklogDep = Annotated[Backlog, Depends(app_state("backlog"))]
