"""The ledger's hot-path statements, built once with bind parameters (R21, R33).

Each runs once or twice per task. Core statements on the table, compiled once and then
found in SQLAlchemy's cache, cost a fraction of statements rebuilt through the ORM on
every call. Callers pass `task_id` and the parameters named below; `updated_at` is set
by the column's onupdate.
"""

from __future__ import annotations

from sqlalchemy import DateTime, String, Table, Text, bindparam, func, insert, select, update

from {{ cookiecutter.package_name }}.ledger.models import FINAL_STATES, TaskRecord, TaskState

LEDGER: Table = TaskRecord.__table__  # type: ignore[assignment]
_ROW = LEDGER.c.id == bindparam("task_id", type_=String)
_UNFINISHED = LEDGER.c.state.not_in(FINAL_STATES)

# A new row: the values of publish.new_row().
INSERT = insert(LEDGER)

# Handed to the broker (`task_ids`; only QUEUED rows: a fast worker may have claimed one).
MARK_PUBLISHED = (
    update(LEDGER)
    .where(
        LEDGER.c.id.in_(bindparam("task_ids", expanding=True)),
        LEDGER.c.state == TaskState.QUEUED,
    )
    .values(
        state=TaskState.PUBLISHED,
        published_at=bindparam("now", type_=DateTime),
        dispatches=LEDGER.c.dispatches + 1,
    )
)

# A worker starts it (`now`, `worker`): never a row that already finished.
CLAIM = (
    update(LEDGER)
    .where(_ROW, _UNFINISHED)
    .values(
        state=TaskState.STARTED,
        attempts=LEDGER.c.attempts + 1,
        started_at=bindparam("now", type_=DateTime),
        worker=bindparam("worker", type_=String),
    )
)

# Any later state (`state`; `error` and `finished_at` may be None to keep the old value).
MARK = (
    update(LEDGER)
    .where(_ROW, _UNFINISHED)
    .values(
        state=bindparam("state", type_=String),
        last_error=func.coalesce(bindparam("error", type_=Text), LEDGER.c.last_error),
        finished_at=func.coalesce(bindparam("finished_at", type_=DateTime), LEDGER.c.finished_at),
    )
)

STATE = select(LEDGER.c.state).where(_ROW)
ATTEMPTS = select(LEDGER.c.attempts).where(_ROW)
ROW = select(LEDGER).where(_ROW)
