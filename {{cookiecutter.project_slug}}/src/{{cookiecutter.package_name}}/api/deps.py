"""Typed route dependencies on what app.py keeps in `app.state`: the one place routers read it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, Request

from {{ cookiecutter.package_name }}.api.admission import Backlog
from {{ cookiecutter.package_name }}.api.catalog import TaskCatalog
from {{ cookiecutter.package_name }}.settings import Settings


def _state(name: str) -> Callable[[Request], Any]:
    def read(request: Request) -> Any:
        return getattr(request.app.state, name)

    return read


CeleryDep = Annotated[Celery, Depends(_state("celery"))]
CatalogDep = Annotated[TaskCatalog, Depends(_state("catalog"))]
SettingsDep = Annotated[Settings, Depends(_state("settings"))]
BacklogDep = Annotated[Backlog, Depends(_state("backlog"))]
