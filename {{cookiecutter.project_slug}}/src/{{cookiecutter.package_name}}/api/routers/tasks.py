"""/api/v1/tasks: submit (R05, R07, R33), status (R22, R23) and cancel (R24)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from celery import Celery, states
from celery.result import AsyncResult
from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy import Row

from {{ cookiecutter.package_name }}.api.auth import AUTH_RESPONSES, Principal, needs
from {{ cookiecutter.package_name }}.api.catalog import SubmissionRejected
from {{ cookiecutter.package_name }}.api.deps import BacklogDep, CatalogDep, CeleryDep, SettingsDep
from {{ cookiecutter.package_name }}.api.dispatch import (
    BrokerUnavailable,
    LedgerUnavailable,
    dispatch,
    ledger_errors,
    ledger_session,
)
from {{ cookiecutter.package_name }}.api.keys import Scope
from {{ cookiecutter.package_name }}.api.metrics import count_submission
from {{ cookiecutter.package_name }}.api.schemas import (
    TaskAccepted,
    TaskCancelled,
    TaskError,
    TaskStatus,
    TaskSubmission,
)
from {{ cookiecutter.package_name }}.broker_errors import BROKER_ERRORS
from {{ cookiecutter.package_name }}.ledger import statements
from {{ cookiecutter.package_name }}.ledger.db import single_statement
from {{ cookiecutter.package_name }}.ledger.models import FINAL_STATES, TaskRecord, TaskState
from {{ cookiecutter.package_name }}.ledger.tracking import mark
from {{ cookiecutter.package_name }}.observability.logging import request_id_var
from {{ cookiecutter.package_name }}.tasks.base import PROGRESS
from {{ cookiecutter.package_name }}.tasks.cancel import request_abort

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"], responses=AUTH_RESPONSES)

RUNNING_STATES = frozenset({states.STARTED, PROGRESS})


UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "Ledger database or Redis unreachable"}
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        413: {"description": "Body too large"},
        422: {"description": "Unknown task, bad arguments, queue not allowed or delay too long"},
        503: {
            "description": "The task's queue is full (see Retry-After), or the ledger database"
            " is unreachable; nothing was queued"
        },
    },
)
def submit_task(
    submission: TaskSubmission,
    request: Request,
    response: Response,
    app: CeleryDep,
    tasks: CatalogDep,
    intake: BacklogDep,
    config: SettingsDep,
    principal: Annotated[Principal, needs(Scope.TASKS_SUBMIT)],
) -> TaskAccepted:
    """202 once the ledger row is durable: PUBLISHED, or QUEUED if the broker was down."""
    try:
        record = dispatch(
            app,
            tasks,
            intake,
            config,
            submission,
            request_id=request_id_var.get(),
            submitted_by=principal.name,
        )
    except SubmissionRejected as exc:
        count_submission(config, submission.name, "rejected")
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    except LedgerUnavailable:
        count_submission(config, submission.name, "ledger_unavailable")
        raise
    count_submission(config, record.name, record.state.lower())
    return accepted(request, response, record)


@router.get(
    "/{task_id}",
    name="get_task",
    responses={404: {"description": "Unknown task id"}, **UNAVAILABLE},
)
def get_task(
    task_id: uuid.UUID,
    app: CeleryDep,
    principal: Annotated[Principal, needs(Scope.TASKS_READ)],
) -> TaskStatus:
    """The ledger's record (state, attempts, timestamps) plus Celery's state and result.

    A caller sees its own tasks (tasks:admin sees all); another caller's is a 404.
    """
    key = str(task_id)
    record = _visible_row(key, principal)
    celery_state: str
    try:
        celery_state, info, date_done = _backend_status(app, key)
    except BROKER_ERRORS as exc:
        if record is None:
            raise BrokerUnavailable(f"result backend unreachable: {exc}") from exc
        celery_state, info, date_done = "UNKNOWN", None, None
    if record is None and celery_state == states.PENDING:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no task with id {key}")
    # The ledger row's columns (its state first), else Celery's state alone; then Celery's view.
    ledger = record._asdict() if record else {"state": celery_state}
    return TaskStatus.model_validate(
        {
            **ledger,
            "id": key,
            "celery_state": celery_state,
            "result": _json_or_repr(info) if celery_state == states.SUCCESS else None,
            "progress": info if celery_state in RUNNING_STATES and isinstance(info, dict) else None,
            "error": _error(info) if isinstance(info, BaseException) else None,
            "date_done": date_done,
        }
    )


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        404: {"description": "Unknown task id"},
        409: {"description": "Task already finished"},
        **UNAVAILABLE,
    },
)
def cancel_task(
    task_id: uuid.UUID,
    app: CeleryDep,
    principal: Annotated[Principal, needs(Scope.TASKS_CANCEL)],
) -> TaskCancelled:
    """Revoke a task that has not started; ask a running one to abort at its next checkpoint."""
    key = str(task_id)
    record = _visible_row(key, principal)
    try:
        celery_state = AsyncResult(key, app=app).state
        if record is None and celery_state == states.PENDING:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no task with id {key}")
        finished = record.state in FINAL_STATES if record else celery_state in states.READY_STATES
        if finished:
            state = record.state if record else celery_state
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"task already ended: {state}")
        running = celery_state in RUNNING_STATES
        if running:
            request_abort(app, key)
        # Revoked ids are skipped when (re)delivered, so a running task is never re-run.
        app.control.revoke(key)
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"broker unreachable: {exc}") from exc
    if not running:
        with ledger_session() as session:
            mark(session, key, TaskState.REVOKED, "revoked through the API")
    return TaskCancelled(id=key, action="abort_requested" if running else "revoked")


def accepted(request: Request, response: Response, record: TaskRecord) -> TaskAccepted:
    """202 body for a ledger row, with its status URL (also in the Location header)."""
    status_url = str(request.url_for("get_task", task_id=record.id))
    response.headers["Location"] = status_url
    return TaskAccepted(
        id=record.id,
        name=record.name,
        queue=record.queue,
        state=record.state,
        status_url=status_url,
    )


def _visible_row(task_id: str, principal: Principal) -> Row[Any] | None:
    """The row's columns (one autocommit round trip), if the caller may see it.

    Another caller's task answers exactly as an unknown id does. A task with no row (a
    subtask a worker sent) belongs to nobody: only tasks:admin sees it.
    """
    with ledger_errors(), single_statement() as connection:
        row = connection.execute(statements.ROW, {"task_id": task_id}).one_or_none()
    if not principal.may_see(row.submitted_by if row else None):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no task with id {task_id}")
    return row


def _backend_status(app: Celery, task_id: str) -> tuple[str, Any, datetime | None]:
    """Celery's state, result (or progress, or exception) and date_done, in one read.

    AsyncResult's properties each read the backend again until the task is ready: three
    round trips per status call for a task that is still running.
    """
    meta = app.backend.get_task_meta(task_id)
    date_done = meta.get("date_done")
    if isinstance(date_done, str):
        date_done = datetime.fromisoformat(date_done)
    return str(meta["status"]), meta.get("result"), date_done


def _error(exc: BaseException) -> TaskError:
    return TaskError(type=type(exc).__name__, message=str(exc))


def _json_or_repr(value: Any) -> Any:
    plain = isinstance(value, str | int | float | bool | list | dict | None)
    return value if plain else repr(value)
