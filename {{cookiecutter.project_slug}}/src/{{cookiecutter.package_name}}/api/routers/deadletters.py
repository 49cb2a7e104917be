"""/api/v1/dead-letters: final failures, and their replay as a fresh attempt (R14)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from {{ cookiecutter.package_name }}.api.auth import AUTH_RESPONSES, Principal, needs
from {{ cookiecutter.package_name }}.api.deps import CatalogDep, CeleryDep
from {{ cookiecutter.package_name }}.api.dispatch import ledger_session
from {{ cookiecutter.package_name }}.api.keys import Scope
from {{ cookiecutter.package_name }}.api.routers.tasks import accepted
from {{ cookiecutter.package_name }}.api.schemas import DeadLetter, TaskAccepted
from {{ cookiecutter.package_name }}.ledger.deadletters import (
    NotAllowed,
    NotReplayable,
    UnknownTask,
    list_dead,
    replay,
)

router = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"], responses=AUTH_RESPONSES)


@router.get("", responses={503: {"description": "Ledger database unreachable"}})
def list_dead_letters(
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    # OFFSET is a signed 64-bit integer in every ledger database: beyond it is a 422, not a 503.
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    *,
    caller: Annotated[Principal, needs(Scope.DEADLETTERS_READ)],
) -> list[DeadLetter]:
    """Tasks that ended DEAD (retries or attempts exhausted) or FAILED (not retryable)."""
    with ledger_session() as session:
        rows = list_dead(session, limit=limit, offset=offset)
        return [DeadLetter.model_validate(row) for row in rows]


@router.post(
    "/{task_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        404: {"description": "Unknown task id"},
        409: {"description": "Not a dead or failed task"},
        422: {"description": "The task is not in API_TASK_ALLOWLIST"},
        503: {"description": "Ledger database unreachable"},
    },
)
def replay_dead_letter(
    task_id: uuid.UUID,
    request: Request,
    response: Response,
    app: CeleryDep,
    catalog: CatalogDep,
    caller: Annotated[Principal, needs(Scope.DEADLETTERS_REPLAY)],
) -> TaskAccepted:
    """Run it again under a new id; the dead row stays as history (`replay_of`).

    Replaying the same row again answers with that same new run: nothing runs twice.
    """
    try:
        with ledger_session() as session:
            record = replay(
                session, app, str(task_id), allowed=catalog.names, submitted_by=caller.name
            )
    except UnknownTask as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except NotReplayable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except NotAllowed as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    return accepted(request, response, record)
