"""Beat's schedule from the `periodic_tasks` table, run by one beat at a time (R29, R30).

Rows can be added, changed or disabled while beat runs: the schedule is re-read every
BEAT_RELOAD_INTERVAL seconds. Several beat processes may run (a rolling deploy, a
second replica): only the holder of the `beat_lease` row ticks; the others wait and
take over when the lease expires. `last_run_at` is stored before each run is sent, so
a new holder continues the schedule instead of repeating it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.beat import ScheduleEntry, Scheduler
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from {{ cookiecutter.package_name }}.healthcheck import touch_heartbeat
from {{ cookiecutter.package_name }}.ledger.db import changed_rows, session_scope
from {{ cookiecutter.package_name }}.ledger.models import BeatLease, PeriodicTask, utcnow
from {{ cookiecutter.package_name }}.schedule import PeriodicSpec, celery_schedule, default_entries
from {{ cookiecutter.package_name }}.settings import get_settings

logger = logging.getLogger(__name__)
LEASE_NAME = "beat"


def install_defaults(specs: list[PeriodicSpec]) -> None:
    """Insert the default entries that are not in the table yet; never overwrite edits."""
    with session_scope() as session:
        existing = set(session.scalars(select(PeriodicTask.name)))
        for spec in specs:
            if spec.name not in existing:
                session.add(spec.row())


def acquire_lease(holder: str, seconds: float, now: datetime | None = None) -> bool:
    """Take or renew the lease; False while another live holder has it."""
    now = now or utcnow()
    expires = now + timedelta(seconds=seconds)
    with session_scope() as session:
        renewed = changed_rows(
            session,
            update(BeatLease)
            .where(
                BeatLease.name == LEASE_NAME,
                (BeatLease.holder == holder) | (BeatLease.expires_at < now),
            )
            .values(holder=holder, expires_at=expires),
        )
    if renewed:
        return True
    try:
        with session_scope() as session:
            session.execute(
                insert(BeatLease).values(name=LEASE_NAME, holder=holder, expires_at=expires)
            )
    except IntegrityError:
        return False
    return True


class LedgerScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._settings = get_settings()
        self._holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._entries: dict[str, ScheduleEntry] = {}
        self._loaded_at = float("-inf")
        self._leading = False
        super().__init__(*args, **kwargs)
        # Wake often enough to renew the lease and notice edited rows.
        self.max_interval = max(1, int(self._settings.beat_reload_interval))

    def setup_schedule(self) -> None:
        install_defaults(default_entries(self._settings))

    def get_schedule(self) -> dict[str, ScheduleEntry]:
        if time.monotonic() - self._loaded_at >= self._settings.beat_reload_interval:
            self._entries = self._load()
            self._loaded_at = time.monotonic()
        return self._entries

    def set_schedule(self, schedule: dict[str, ScheduleEntry]) -> None:
        self._entries = schedule

    schedule = property(get_schedule, set_schedule)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        # Alive, leading or standing by: the container healthcheck reads this file's age.
        touch_heartbeat(self._settings.heartbeat_file)
        try:
            leading = acquire_lease(self._holder, self._settings.beat_lease_seconds)
        except SQLAlchemyError as exc:
            logger.error("beat lease unavailable", extra={"error": str(exc)})
            leading = False
        if leading != self._leading:
            logger.warning(
                "beat leadership changed",
                extra={"event": "beat_leader" if leading else "beat_standby"},
            )
            self._leading = leading
            # A new leader must see the last runs its predecessor stored.
            self._loaded_at = float("-inf")
            self._heap = None
        if not leading:
            return float(self._settings.beat_reload_interval)
        return float(super().tick(*args, **kwargs))

    def reserve(self, entry: Any) -> Any:
        """Store the run before it is sent: a successor never repeats it."""
        new_entry: ScheduleEntry = next(entry)
        self.schedule[entry.name] = new_entry
        last_run = (new_entry.last_run_at or self.app.now()).astimezone(UTC).replace(tzinfo=None)
        with session_scope() as session:
            changed_rows(
                session,
                update(PeriodicTask)
                .where(PeriodicTask.name == entry.name)
                .values(last_run_at=last_run)
                .execution_options(synchronize_session=False),
            )
        return new_entry

    def _load(self) -> dict[str, ScheduleEntry]:
        try:
            with session_scope() as session:
                rows = session.scalars(select(PeriodicTask).where(PeriodicTask.enabled)).all()
        except SQLAlchemyError as exc:
            logger.error(
                "periodic tasks unavailable; keeping the last schedule", extra={"error": str(exc)}
            )
            return self._entries
        entries: dict[str, ScheduleEntry] = {}
        for row in rows:
            timing = celery_schedule(row.interval_seconds, row.crontab)
            options: dict[str, Any] = {"queue": row.queue} if row.queue else {}
            if row.interval_seconds is not None:
                # A tick nobody ran before the next one is stale: let it expire.
                options["expires"] = row.interval_seconds
            entries[row.name] = ScheduleEntry(
                name=row.name,
                task=row.task,
                schedule=timing,
                kwargs=row.kwargs,
                options=options,
                last_run_at=(row.last_run_at.replace(tzinfo=UTC) if row.last_run_at else None),
                app=self.app,
            )
        return entries

    def sync(self) -> None:
        """Runs are stored as they happen (reserve); nothing is buffered."""

    @property
    def info(self) -> str:
        return f"    . db -> periodic_tasks (lease holder {self._holder})"
