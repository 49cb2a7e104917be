"""Bare FastAPI apps with the task API's two routes: the baselines of the API scenario.

- `app` answers canned JSON: what FastAPI, uvicorn and gunicorn cost before the ledger,
  the broker or any middleware does anything.
- `celery_only` publishes with the project's Celery app and reads its result backend,
  with no ledger and no middleware: the floor of any API that hands each request to
  Celery, which the project's figures can be held against.

Both run under the project's own gunicorn configuration (same worker class, same worker
count). The handlers are plain `def`, like the project's, so all pay the same hop to the
thread pool.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery.result import denied_join_result
from fastapi import FastAPI, status
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from {{ cookiecutter.package_name }}.celery_app import app as celery

app = FastAPI(title="bare")
celery_only = FastAPI(title="bare, Celery only")


class Submission(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)


def accepted(task_id: str, submission: Submission) -> dict[str, str]:
    """The 202 body, shaped like the project's."""
    return {
        "id": task_id,
        "name": submission.name,
        "queue": "default",
        "state": "PUBLISHED",
        "status_url": f"/api/v1/tasks/{task_id}",
    }


@app.post("/api/v1/tasks", status_code=status.HTTP_202_ACCEPTED)
def submit(submission: Submission) -> dict[str, str]:
    return accepted(str(uuid.uuid4()), submission)


@app.get("/api/v1/tasks/{task_id}")
def get_task(task_id: uuid.UUID) -> dict[str, Any]:
    return {
        "id": str(task_id),
        "name": "demo.echo",
        "state": "SUCCEEDED",
        "celery_state": "SUCCESS",
        "attempts": 1,
        "result": "x",
    }


@celery_only.post("/api/v1/tasks", status_code=status.HTTP_202_ACCEPTED)
def submit_to_celery(submission: Submission) -> dict[str, str]:
    with denied_join_result():
        task_id = str(celery.send_task(submission.name, kwargs=submission.kwargs).id)
    return accepted(task_id, submission)


@celery_only.get("/api/v1/tasks/{task_id}")
def status_from_celery(task_id: uuid.UUID) -> dict[str, Any]:
    meta = celery.backend.get_task_meta(str(task_id))
    return {"id": str(task_id), "celery_state": meta["status"], "result": meta.get("result")}
