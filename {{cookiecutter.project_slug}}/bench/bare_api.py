"""A bare FastAPI app with the task API's two routes, answering canned JSON.

The baseline of the API scenario: run under the project's own gunicorn configuration
(same worker class, same worker count), it shows what FastAPI, uvicorn and gunicorn cost
before the ledger, the broker or any middleware does anything. The handlers are plain
`def`, like the project's, so both pay the same hop to the thread pool.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI, status
from pydantic import BaseModel, ConfigDict, Field, JsonValue

app = FastAPI(title="bare")


class Submission(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)


@app.post("/api/v1/tasks", status_code=status.HTTP_202_ACCEPTED)
def submit(submission: Submission) -> dict[str, str]:
    task_id = str(uuid.uuid4())
    return {
        "id": task_id,
        "name": submission.name,
        "queue": "default",
        "state": "PUBLISHED",
        "status_url": f"/api/v1/tasks/{task_id}",
    }


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
