"""/api/v1/dead-letters: final failures, and their replay as a fresh attempt (R14)."""

from __future__ import annotations

import uuid
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from {{ cookiecutter.package_name }}.api.dispatch import ledger_session
from {{ cookiecutter.package_name }}.api.routers.tasks import accepted
from {{ cookiecutter.package_name }}.api.schemas import DeadLetter, TaskAccepted
from {{ cookiecutter.package_name }}.ledger.deadletters import NotReplayable, list_dead, replay

router = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"])


@router.get("", responses={503: {"description": "Ledger database unreachable"}})
def list_dead_letters(
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[DeadLetter]:
    """Tasks that ended DEAD (retries or attempts exhausted) or FAILED (not retryable)."""
    with ledger_session() as session:
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
            for row in list_dead(session, limit=limit, offset=offset)
        ]


@router.post(
    "/{task_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "Not a dead or failed task"}},
)
def replay_dead_letter(task_id: uuid.UUID, request: Request, response: Response) -> TaskAccepted:
    """Run it again under a new id; the dead row stays as history (`replay_of`)."""
    app: Celery = request.app.state.celery
    try:
        with ledger_session() as session:
            record = replay(session, app, str(task_id))
    except NotReplayable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    return accepted(request, response, record)
