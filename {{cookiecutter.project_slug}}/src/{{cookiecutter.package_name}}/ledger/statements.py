"""The ledger's hot-path statements, built once with bind parameters (R21, R33).

Each runs once or twice per task. Core statements on the table, compiled once and then
found in SQLAlchemy's cache, cost a fraction of statements rebuilt through the ORM on
every call. Callers pass `task_id` and the parameters named below; `updated_at` is set
by the column's onupdate.
"""

from __future__ import annotations

from sqlalchemy import (
    DateTime,
    Float,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)

from {{ cookiecutter.package_name }}.ledger.clock import database_now
from {{ cookiecutter.package_name }}.ledger.models import FINAL_STATES, TaskRecord, TaskState, WorkerHeartbeat
from {{ cookiecutter.package_name }}.settings import get_settings

LEDGER: Table = TaskRecord.__table__  # type: ignore[assignment]
HEARTBEATS: Table = WorkerHeartbeat.__table__  # type: ignore[assignment]
_ROW = LEDGER.c.id == bindparam("task_id", type_=String)
_UNFINISHED = LEDGER.c.state.not_in(FINAL_STATES)
_settings = get_settings()

# The claiming process still beats (within WORKER_DEAD_AFTER, on the database's clock).
OWNER_BEATS = exists().where(
    HEARTBEATS.c.incarnation == LEDGER.c.incarnation,
    HEARTBEATS.c.last_seen >= database_now(-_settings.worker_dead_after),
)
# A run that may still be going: STARTED by a live process, less than the hard time
# limit ago (a run past it has been killed). No copy may start beside it.
LIVE_CLAIM = and_(
    LEDGER.c.state == TaskState.STARTED,
    LEDGER.c.started_at >= database_now(-_settings.task_time_limit),
    OWNER_BEATS,
)

# A new row: the values of publish.new_row().
INSERT = insert(LEDGER)

# Handed to the broker (`task_ids`): every row counts the dispatch, but only a QUEUED row
# becomes PUBLISHED (a fast worker may have claimed it already).
MARK_PUBLISHED = (
    update(LEDGER)
    .where(LEDGER.c.id.in_(bindparam("task_ids", expanding=True)))
    .values(
        state=case((LEDGER.c.state == TaskState.QUEUED, TaskState.PUBLISHED), else_=LEDGER.c.state),
        published_at=bindparam("now", type_=DateTime),
        dispatches=LEDGER.c.dispatches + 1,
    )
)

# A worker starts it (`worker`, `incarnation`): never a row that already finished, nor
# one a live run holds (a copy arriving meanwhile: a restored message, a re-dispatch),
# unless the holder is the attempt that sent this retry (`retry_of`; NULL otherwise).
CLAIM = (
    update(LEDGER)
    .where(
        _ROW,
        _UNFINISHED,
        or_(not_(LIVE_CLAIM), LEDGER.c.attempts == bindparam("retry_of", type_=Integer)),
    )
    .values(
        state=TaskState.STARTED,
        attempts=LEDGER.c.attempts + 1,
        started_at=database_now(),
        worker=bindparam("worker", type_=String),
        incarnation=bindparam("incarnation", type_=String),
    )
)

# A retry is scheduled (`error`, `delay` seconds): RETRY before its message exists, so a
# fast copy finds the row free; `eta` says when it is due (reconcile.rescue_orphans).
# A row nobody claimed (the ledger failed the claim) becomes the scheduling process's
# (`incarnation`), so its death sends the retry again should the message die with it.
MARK_RETRY = (
    update(LEDGER)
    .where(_ROW, _UNFINISHED)
    .values(
        state=TaskState.RETRY,
        last_error=bindparam("error", type_=Text),
        eta=database_now(bindparam("delay", type_=Float)),
        incarnation=func.coalesce(LEDGER.c.incarnation, bindparam("incarnation", type_=String)),
    )
)

# The pool process running it died (`owner`: this process): the requeued message may run.
RELEASE = (
    update(LEDGER)
    .where(
        _ROW,
        LEDGER.c.state == TaskState.STARTED,
        LEDGER.c.incarnation == bindparam("owner", type_=String),
    )
    .values(incarnation=None)
)

# Celery cancelled the run on a broker connection loss (`owner`: this process): PUBLISHED
# again and free, so the message's returning copy runs, or reconcile re-sends a lost one.
REQUEUE = RELEASE.values(state=TaskState.PUBLISHED)

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
STATE_AND_ATTEMPTS = select(LEDGER.c.state, LEDGER.c.attempts).where(_ROW)
ATTEMPTS = select(LEDGER.c.attempts).where(_ROW)
ROW = select(LEDGER).where(_ROW)
