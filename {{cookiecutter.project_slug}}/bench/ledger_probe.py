"""Ledger tables of a given size, and reconcile passes over them; run as a child.

    python -m bench.ledger_probe fill FINAL_ROWS STALE_ROWS
    python -m bench.ledger_probe reconcile PASSES

`fill` grows `task_ledger` to FINAL_ROWS finished rows (SUCCEEDED, an hour old) plus
STALE_ROWS rows left PUBLISHED two days ago, which the reconcile job must find and send
again. Rows are made on the server where the dialect can (PostgreSQL's generate_series),
else inserted in batches. It prints the seconds it took and the id of a finished row.

`reconcile` times PASSES calls of `ledger.reconcile.reconcile(app, settings)`, after one
untimed pass that opens the connections; before each pass the stale rows are made stale
again (a pass re-sends a batch of them and they are no longer stale).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, text, update

from {{ cookiecutter.package_name }}.celery_app import app
from {{ cookiecutter.package_name }}.ledger.db import get_engine, session_scope
from {{ cookiecutter.package_name }}.ledger.models import TaskRecord, TaskState, utcnow
from {{ cookiecutter.package_name }}.ledger.reconcile import reconcile
from {{ cookiecutter.package_name }}.settings import get_settings

# Every row made here names this worker; stale ones also carry this request id, so they
# can be found (and made stale again) by it.
WORKER = "bench"
STALE_MARK = "bench-stale"
# Rows per INSERT where the rows are sent from here.
BATCH = 10_000
# Finished rows are recent (inside any retention period) ...
FINAL_AGE = timedelta(hours=1)
# ... stale ones are older than every reconcile threshold.
STALE_AGE = timedelta(days=2)

# PostgreSQL makes the rows itself: ids are UUIDs derived from the row number.
POSTGRES_FILL = text(
    """
    INSERT INTO task_ledger (id, name, queue, args, kwargs, state, attempts, dispatches,
        worker, request_id, created_at, updated_at, published_at, started_at, finished_at)
    SELECT md5(CAST(:tag AS text) || n::text)::uuid::text, 'demo.echo', 'default', '[]',
        '{"message": "x"}', CAST(:state AS text), CAST(:attempts AS integer), 1,
        CAST(:worker AS text), CAST(:request_id AS text), CAST(:at AS timestamp),
        CAST(:at AS timestamp), CAST(:at AS timestamp), CAST(:started AS timestamp),
        CAST(:finished AS timestamp)
    FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS n
    """
)


def row_values(state: str, at: Any, request_id: str | None) -> dict[str, Any]:
    final = state == TaskState.SUCCEEDED
    return {
        "state": state,
        "worker": WORKER,
        "attempts": 1 if final else 0,
        "request_id": request_id,
        "at": at,
        "started": at if final else None,
        "finished": at if final else None,
    }


def add_rows(first: int, last: int, tag: str, values: dict[str, Any]) -> None:
    """Rows number `first` to `last` (inclusive) of one kind."""
    if last < first:
        return
    if get_engine().dialect.name == "postgresql":
        with session_scope() as session:
            session.execute(POSTGRES_FILL, {**values, "tag": tag, "first": first, "last": last})
        return
    for start in range(first, last + 1, BATCH):
        rows = [
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{tag}{n}")),
                "name": "demo.echo",
                "queue": "default",
                "args": [],
                "kwargs": {"message": "x"},
                "state": values["state"],
                "attempts": values["attempts"],
                "dispatches": 1,
                "worker": WORKER,
                "request_id": values["request_id"],
                "created_at": values["at"],
                "updated_at": values["at"],
                "published_at": values["at"],
                "started_at": values["started"],
                "finished_at": values["finished"],
            }
            for n in range(start, min(start + BATCH - 1, last) + 1)
        ]
        with session_scope() as session:
            session.execute(insert(TaskRecord), rows)


def count_rows(session: Any, *conditions: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(TaskRecord).where(*conditions)))


def analyze() -> None:
    """Fresh planner statistics, as autovacuum / autoanalyze would have by then."""
    statement = {"postgresql": "ANALYZE task_ledger", "sqlite": "ANALYZE"}.get(
        get_engine().dialect.name, "ANALYZE TABLE task_ledger"
    )
    with get_engine().connect() as connection:
        connection.execute(text(statement))
        connection.commit()


def fill(final_rows: int, stale_rows: int) -> dict[str, Any]:
    started = time.perf_counter()
    now = utcnow()
    ours = TaskRecord.worker == WORKER
    with session_scope() as session:
        # Only the bench's own rows stay: whatever other scenarios left goes.
        session.execute(delete(TaskRecord).where(or_(TaskRecord.worker.is_(None), ~ours)))
        have_final = count_rows(session, ours, TaskRecord.state == TaskState.SUCCEEDED)
        have_stale = count_rows(session, ours, TaskRecord.request_id == STALE_MARK)
    final = row_values(TaskState.SUCCEEDED, now - FINAL_AGE, None)
    add_rows(have_final + 1, final_rows, "final-", final)
    stale = row_values(TaskState.PUBLISHED, now - STALE_AGE, STALE_MARK)
    add_rows(have_stale + 1, stale_rows, "stale-", stale)
    analyze()
    with session_scope() as session:
        sample = session.scalar(
            select(TaskRecord.id).where(TaskRecord.state == TaskState.SUCCEEDED).limit(1)
        )
        rows = count_rows(session)
    return {"seconds": time.perf_counter() - started, "rows": rows, "sample_id": sample}


def make_stale_again() -> None:
    with session_scope() as session:
        session.execute(
            update(TaskRecord)
            .where(TaskRecord.request_id == STALE_MARK)
            .values(
                state=TaskState.PUBLISHED,
                updated_at=utcnow() - STALE_AGE,
                dispatches=1,
                attempts=0,
                finished_at=None,
            )
            .execution_options(synchronize_session=False)
        )


def one_pass() -> tuple[float, int]:
    make_stale_again()
    started = time.perf_counter()
    report = reconcile(app, get_settings())
    return time.perf_counter() - started, len(report.redispatched)


def passes(count: int) -> dict[str, Any]:
    one_pass()
    timed = [one_pass() for _ in range(count)]
    return {"seconds": [s for s, _ in timed], "redispatched": [n for _, n in timed]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    filling = commands.add_parser("fill")
    filling.add_argument("final_rows", type=int)
    filling.add_argument("stale_rows", type=int)
    passing = commands.add_parser("reconcile")
    passing.add_argument("passes", type=int)
    options = parser.parse_args()
    if options.command == "fill":
        answer = fill(options.final_rows, options.stale_rows)
    else:
        answer = passes(options.passes)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
