"""Request and response bodies of the task API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    model_validator,
)

from {{ cookiecutter.package_name }}.queues import QueueName


def _as_utc(value: datetime) -> datetime:
    """The ledger stores naive UTC: an answer carries the zone (+00:00)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_representable(value: datetime) -> datetime:
    """Refuse an eta whose UTC time falls outside year 1..9999 (0001-01-01T00:00+14:00)."""
    try:
        value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("eta is out of range once converted to UTC") from exc
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
Eta = Annotated[AwareDatetime, AfterValidator(_utc_representable)]


class TaskSubmission(BaseModel):
    """POST /api/v1/tasks: which allowlisted task to run, with what, where and when."""

    # Both delays at once is a 422 (the validator below): the schema says so too.
    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "not": {
                "required": ["countdown", "eta"],
                "properties": {"countdown": {"type": "number"}, "eta": {"type": "string"}},
            }
        },
    )

    name: str = Field(min_length=1, max_length=200, examples=["demo.echo"])
    args: list[JsonValue] = Field(default_factory=list, max_length=64)
    kwargs: dict[str, JsonValue] = Field(
        default_factory=dict, max_length=64, examples=[{"message": "hello"}]
    )
    queue: QueueName | None = Field(default=None, description="Override the routed queue")
    countdown: float | None = Field(default=None, ge=0, description="Delay in seconds")
    eta: Eta | None = Field(default=None, description="Earliest run time (with zone)")
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
    created_at: UtcDatetime | None = None
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None
    date_done: UtcDatetime | None = None
    replay_of: str | None = None
    submitted_by: str | None = Field(default=None, description="The API caller that submitted it")


class TaskCancelled(BaseModel):
    id: str
    action: Literal["revoked", "abort_requested"]


class DeadLetter(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    queue: str
    state: str
    attempts: int
    last_error: str | None
    finished_at: UtcDatetime | None


class ErrorBody(BaseModel):
    """Every error answer: the reason (a text, or the validation errors) and the request id."""

    detail: str | list[dict[str, JsonValue]]
    request_id: str = Field(description="Also in the X-Request-ID header, logs and the ledger")
