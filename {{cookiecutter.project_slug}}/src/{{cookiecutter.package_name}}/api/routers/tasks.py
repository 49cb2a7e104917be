"""/api/v1/tasks: submit (R05, R07, R17), status (R22, R23) and cancel (R24)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from celery import Celery, states
from celery.result import AsyncResult
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from {{ cookiecutter.package_name }}.api.catalog import SubmissionRejected, TaskCatalog
from {{ cookiecutter.package_name }}.api.dispatch import BROKER_ERRORS, BrokerUnavailable, dispatch
from {{ cookiecutter.package_name }}.api.metrics import TASKS_SUBMITTED
from {{ cookiecutter.package_name }}.api.schemas import (
    TaskAccepted,
    TaskCancelled,
    TaskError,
    TaskStatus,
    TaskSubmission,
)
from {{ cookiecutter.package_name }}.observability.logging import request_id_var
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.tasks.base import PROGRESS
from {{ cookiecutter.package_name }}.tasks.cancel import request_abort

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])

RUNNING_STATES = frozenset({states.STARTED, PROGRESS})


def celery_app(request: Request) -> Celery:
    app: Celery = request.app.state.celery
    return app


def catalog(request: Request) -> TaskCatalog:
    found: TaskCatalog = request.app.state.catalog
    return found


def settings(request: Request) -> Settings:
    found: Settings = request.app.state.settings
    return found


CeleryDep = Annotated[Celery, Depends(celery_app)]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        413: {"description": "Body too large"},
        422: {"description": "Unknown task, bad arguments or delay too long"},
        503: {"description": "Broker unreachable; nothing was queued"},
    },
)
def submit_task(
    submission: TaskSubmission,
    request: Request,
    response: Response,
    app: CeleryDep,
    tasks: Annotated[TaskCatalog, Depends(catalog)],
    config: Annotated[Settings, Depends(settings)],
) -> TaskAccepted:
    try:
        sent = dispatch(app, tasks, config, submission, request_id_var.get())
    except SubmissionRejected as exc:
        TASKS_SUBMITTED.labels(submission.name[:64], "rejected").inc()
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    except BrokerUnavailable:
        TASKS_SUBMITTED.labels(submission.name, "broker_unavailable").inc()
        raise
    TASKS_SUBMITTED.labels(sent.name, "accepted").inc()
    status_url = str(request.url_for("get_task", task_id=sent.id))
    response.headers["Location"] = status_url
    return TaskAccepted(
        id=sent.id, name=sent.name, queue=sent.queue, state=states.PENDING, status_url=status_url
    )


@router.get("/{task_id}", name="get_task", responses={503: {"description": "Backend unreachable"}})
def get_task(task_id: uuid.UUID, app: CeleryDep) -> TaskStatus:
    result: AsyncResult[Any] = AsyncResult(str(task_id), app=app)
    try:
        state, info, date_done = result.state, result.info, result.date_done
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"result backend unreachable: {exc}") from exc
    return TaskStatus(
        id=str(task_id),
        state=state,
        result=_json_or_repr(info) if state == states.SUCCESS else None,
        progress=info if state in RUNNING_STATES and isinstance(info, dict) else None,
        error=_error(info) if isinstance(info, BaseException) else None,
        date_done=date_done,
    )


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "Task already finished"}, 503: {"description": "Broker down"}},
)
def cancel_task(task_id: uuid.UUID, app: CeleryDep) -> TaskCancelled:
    """Revoke a task that has not started; ask a running one to abort at its next checkpoint."""
    key = str(task_id)
    try:
        state = AsyncResult(key, app=app).state
        if state in states.READY_STATES:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"task already ended: {state}")
        if state in RUNNING_STATES:
            request_abort(app, key)
        # Revoked ids are skipped when (re)delivered, so a running task is never re-run.
        app.control.revoke(key)
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"broker unreachable: {exc}") from exc
    action = "abort_requested" if state in RUNNING_STATES else "revoked"
    return TaskCancelled(id=key, action=action)


def _error(exc: BaseException) -> TaskError:
    return TaskError(type=type(exc).__name__, message=str(exc))


def _json_or_repr(value: Any) -> Any:
    plain = isinstance(value, str | int | float | bool | list | dict | None)
    return value if plain else repr(value)
