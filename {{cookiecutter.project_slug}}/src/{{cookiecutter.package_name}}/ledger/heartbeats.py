"""Worker liveness in the ledger: each worker process's heartbeat row (R34, worker liveness).

A row per running worker process, keyed by its incarnation (new at every start), renewed
on the database's clock. A claim is live while its incarnation's row is fresher than
WORKER_DEAD_AFTER (statements.LIVE_CLAIM); reconcile.rescue_orphans re-sends the rest.
The process side, which calls these, is worker_liveness.py.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable

from sqlalchemy import delete, insert, select, update

from {{ cookiecutter.package_name }}.ledger.clock import database_now
from {{ cookiecutter.package_name }}.ledger.db import changed_rows, retry_on_disconnect, single_statement
from {{ cookiecutter.package_name }}.ledger.statements import HEARTBEATS

# This process's incarnation. Prefork children inherit it with the fork, so every claim
# made in the pool names the main process whose heartbeat vouches for it.
INCARNATION = uuid.uuid4().hex
# Rows of dead processes stay this long for inspection, then go (ledger.prune).
RETENTION_SECONDS = 24 * 3600
_MINE = HEARTBEATS.c.incarnation == INCARNATION


@retry_on_disconnect
def beat(hostname: str, queues: Iterable[str]) -> None:
    """Renew this process's row (created on the first call)."""
    with single_statement() as connection:
        renew = update(HEARTBEATS).where(_MINE).values(last_seen=database_now())
        if changed_rows(connection, renew):
            return
        connection.execute(
            insert(HEARTBEATS).values(
                incarnation=INCARNATION,
                hostname=hostname,
                queues=",".join(queues),
                started_at=database_now(),
                last_seen=database_now(),
            )
        )


@retry_on_disconnect
def supersede(hostname: str) -> list[str]:
    """Delete the rows of earlier processes of this hostname; return their incarnations.

    A new process under the same hostname means the old one is gone for good (one node
    name, one live process: worker_liveness.refuse_a_taken_name), so its claims are dead
    now, not after WORKER_DEAD_AFTER.
    """
    earlier = (HEARTBEATS.c.hostname == hostname) & ~_MINE
    with single_statement() as connection:
        incarnations = list(connection.scalars(select(HEARTBEATS.c.incarnation).where(earlier)))
        if incarnations:
            connection.execute(delete(HEARTBEATS).where(HEARTBEATS.c.incarnation.in_(incarnations)))
    return incarnations


@retry_on_disconnect
def forget() -> None:
    """A clean stop: the claims this process hands back are free at once."""
    with single_statement() as connection:
        connection.execute(delete(HEARTBEATS).where(_MINE))


def live_workers(dead_after: float, queues: Iterable[str]) -> dict[str, int]:
    """Worker processes with a fresh heartbeat, per queue they consume (0 for none)."""
    with single_statement() as connection:
        rows = connection.scalars(
            select(HEARTBEATS.c.queues).where(HEARTBEATS.c.last_seen >= database_now(-dead_after))
        ).all()
    counts = Counter(queue for row in rows for queue in row.split(",") if queue)
    return {queue: counts[queue] for queue in queues}


def prune() -> int:
    """Delete the rows of processes silent for RETENTION_SECONDS; returns how many."""
    old = HEARTBEATS.c.last_seen < database_now(-RETENTION_SECONDS)
    with single_statement() as connection:
        return changed_rows(connection, delete(HEARTBEATS).where(old))
