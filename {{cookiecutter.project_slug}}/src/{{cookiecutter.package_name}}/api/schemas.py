"""Request and response bodies of the task API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, model_validator

QueueName = Literal["high", "default", "low"]


class TaskSubmission(BaseModel):
    """POST /api/v1/tasks: which allowlisted task to run, with what, where and when."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, examples=["demo.echo"])
    args: list[JsonValue] = Field(default_factory=list, max_length=64)
    kwargs: dict[str, JsonValue] = Field(
        default_factory=dict, max_length=64, examples=[{"message": "hello"}]
    )
    queue: QueueName | None = Field(default=None, description="Override the routed queue")
    countdown: float | None = Field(default=None, ge=0, description="Delay in seconds")
    eta: AwareDatetime | None = Field(default=None, description="Earliest run time (with zone)")
    priority: int | None = Field(default=None, ge=0, le=9, description="0 = most urgent")

    @model_validator(mode="after")
    def _one_delay_at_most(self) -> TaskSubmission:
        if self.countdown is not None and self.eta is not None:
            raise ValueError("give countdown or eta, not both")
        return self


class TaskAccepted(BaseModel):
    id: str
    name: str
    queue: str
    state: str = Field(description="PUBLISHED, or QUEUED if the broker was unreachable")
    status_url: str


class TaskError(BaseModel):
    type: str
    message: str


class TaskStatus(BaseModel):
    id: str
    name: str | None = None
    state: str = Field(description="Ledger state (QUEUED ... SUCCEEDED, DEAD), or Celery's")
    celery_state: str = Field(description="PENDING, STARTED, PROGRESS, RETRY, SUCCESS...")
    attempts: int | None = None
    last_error: str | None = None
    result: JsonValue = None
    progress: dict[str, JsonValue] | None = None
    error: TaskError | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    date_done: datetime | None = None
    replay_of: str | None = None


class TaskCancelled(BaseModel):
    id: str
    action: Literal["revoked", "abort_requested"]


class DeadLetter(BaseModel):
    id: str
    name: str
    queue: str
    state: str
    attempts: int
    last_error: str | None
    finished_at: datetime | None
