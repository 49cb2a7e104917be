"""Ledger tables: one row per task, plus the example's side-effect table."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Microseconds everywhere: MySQL's DATETIME keeps whole seconds unless told otherwise.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def utcnow() -> datetime:
    """Naive UTC: the one representation every dialect stores the same way."""
    return datetime.now(UTC).replace(tzinfo=None)


class TaskState(StrEnum):
    QUEUED = "QUEUED"  # row committed, not yet handed to the broker
    PUBLISHED = "PUBLISHED"  # the broker took the message
    STARTED = "STARTED"  # a worker runs it (attempts counts every start)
    RETRY = "RETRY"  # an attempt failed, a retry is scheduled
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # a non-retryable error: final, replayable by hand
    DEAD = "DEAD"  # retries or attempts exhausted: final, on the dead queue
    REVOKED = "REVOKED"  # cancelled through the API


FINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD, TaskState.REVOKED})


class Base(DeclarativeBase):
    pass


class TaskRecord(Base):
    __tablename__ = "task_ledger"
    __table_args__ = (
        # The reconcile scan: stale rows of a given state.
        Index("ix_task_ledger_state_updated_at", "state", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(50))
    args: Mapped[list[Any]] = mapped_column(JSON, default=list)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    priority: Mapped[int | None] = mapped_column(Integer, default=None)
    eta: Mapped[datetime | None] = mapped_column(Timestamp, default=None)
    state: Mapped[str] = mapped_column(String(16), default=TaskState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    dispatches: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    # The worker process that claimed the row last (WorkerHeartbeat.incarnation).
    incarnation: Mapped[str | None] = mapped_column(String(32), default=None)
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # Who submitted it through the API (an API key's name, or "oidc:<subject>"): only
    # they, or a caller with the tasks:admin scope, may read or cancel it.
    submitted_by: Mapped[str | None] = mapped_column(String(200), default=None)
    replay_of: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(Timestamp, default=None)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, default=None, index=True)


class WorkerHeartbeat(Base):
    """One row per running worker process, renewed every WORKER_HEARTBEAT_INTERVAL.

    Keyed by the incarnation, a new id at every start: a restarted container keeps its
    hostname, so the hostname alone cannot tell the dead process from its successor.
    `last_seen` is the database's clock (ledger/clock.py), never the worker's.
    """

    __tablename__ = "worker_heartbeats"

    incarnation: Mapped[str] = mapped_column(String(32), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), index=True)
    queues: Mapped[str] = mapped_column(String(255))  # comma-separated
    started_at: Mapped[datetime] = mapped_column(Timestamp)
    last_seen: Mapped[datetime] = mapped_column(Timestamp, index=True)


class Recovery(StrEnum):
    """Why a row was sent again (counted in RecoveryCount, logged with each row)."""

    STALE_QUEUED = "stale_queued"  # never reached the broker
    STALE_PUBLISHED = "stale_published"  # sent, never started (lost in a failover)
    STALE_STARTED = "stale_started"  # started longer ago than any run may take
    STALE_RETRY = "stale_retry"  # its scheduled retry never came
    WORKER_LOST = "worker_lost"  # its worker's heartbeat stopped (WORKER_DEAD_AFTER)
    WORKER_RESTARTED = "worker_restarted"  # a new process took its worker's hostname


class RecoveryCount(Base):
    """Rows sent again, by cause, since the ledger was created (a Prometheus counter)."""

    __tablename__ = "recovery_counts"

    cause: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


# demo.record_effect's key must fit (tasks/demo.py bounds the argument with it).
EFFECT_KEY_LENGTH = 200


class DemoEffect(Base):
    """What `demo.record_effect` writes: one row per committed execution, keyed by task id.

    Not unique on purpose: counting rows per task id counts executions, which is how
    the tests prove a redelivered task never repeats its side effect (R21).
    """

    __tablename__ = "demo_effects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(36), index=True)
    key: Mapped[str] = mapped_column(String(EFFECT_KEY_LENGTH))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class PeriodicTask(Base):
    """A beat entry kept in the database: add, change or disable rows at run time (R30)."""

    __tablename__ = "periodic_tasks"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    task: Mapped[str] = mapped_column(String(200))
    # Exactly one of the two: seconds between runs, or a five-field crontab.
    interval_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    crontab: Mapped[str | None] = mapped_column(String(100), default=None)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    queue: Mapped[str | None] = mapped_column(String(50), default=None)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_run_at: Mapped[datetime | None] = mapped_column(Timestamp, default=None)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class BeatLease(Base):
    """Who may run the schedule: one holder at a time, for a renewable lease (R29)."""

    __tablename__ = "beat_lease"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
