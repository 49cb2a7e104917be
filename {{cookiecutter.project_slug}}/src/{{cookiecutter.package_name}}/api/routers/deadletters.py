"""/api/v1/dead-letters: final failures, and their replay as a fresh attempt (R14)."""

from __future__ import annotations

import uuid
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from sqlalchemy.exc import SQLAlchemyError

from {{ cookiecutter.package_name }}.api.dispatch import LedgerUnavailable
from {{ cookiecutter.package_name }}.api.schemas import DeadLetter, TaskAccepted
from {{ cookiecutter.package_name }}.ledger.db import session_scope
from {{ cookiecutter.package_name }}.ledger.deadletters import NotReplayable, list_dead, replay

router = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"])


@router.get("", responses={503: {"description": "Ledger database unreachable"}})
def list_dead_letters(
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[DeadLetter]:
    """Tasks that ended DEAD (retries or attempts exhausted) or FAILED (not retryable)."""
    try:
        with session_scope() as session:
            rows = list_dead(session, limit=limit, offset=offset)
            return [
                DeadLetter(
                    id=row.id,
                    name=row.name,
                    queue=row.queue,
                    state=row.state,
                    attempts=row.attempts,
                    last_error=row.last_error,
                    finished_at=row.finished_at,
                )
                for row in rows
            ]
    except SQLAlchemyError as exc:
        raise LedgerUnavailable(f"ledger database unreachable: {type(exc).__name__}") from exc


@router.post(
    "/{task_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "Not a dead or failed task"}},
)
def replay_dead_letter(task_id: uuid.UUID, request: Request, response: Response) -> TaskAccepted:
    """Run it again under a new id; the dead row stays as history (`replay_of`)."""
    app: Celery = request.app.state.celery
    try:
        with session_scope() as session:
            record = replay(session, app, str(task_id))
    except NotReplayable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except SQLAlchemyError as exc:
        raise LedgerUnavailable(f"ledger database unreachable: {type(exc).__name__}") from exc
    status_url = str(request.url_for("get_task", task_id=record.id))
    response.headers["Location"] = status_url
    return TaskAccepted(
        id=record.id,
        name=record.name,
        queue=record.queue,
        state=record.state,
        status_url=status_url,
    )
