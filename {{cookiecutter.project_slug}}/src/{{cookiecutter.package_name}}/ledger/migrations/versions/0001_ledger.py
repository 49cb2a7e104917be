"""The task ledger, the demo side-effect table, periodic tasks and the beat lease.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    _create_task_ledger()
    _create_demo_effects()
    _create_periodic_tasks()
    _create_beat_lease()


def _create_task_ledger() -> None:
    op.create_table(
        "task_ledger",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(50), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("kwargs", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=True),
        sa.Column("eta", Timestamp, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("dispatches", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("replay_of", sa.String(36), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("published_at", Timestamp, nullable=True),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
    )
    op.create_index("ix_task_ledger_state_updated_at", "task_ledger", ["state", "updated_at"])
    op.create_index("ix_task_ledger_finished_at", "task_ledger", ["finished_at"])
    op.create_index("ix_task_ledger_replay_of", "task_ledger", ["replay_of"])


def _create_demo_effects() -> None:
    op.create_table(
        "demo_effects",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_demo_effects_task_id", "demo_effects", ["task_id"])


def _create_periodic_tasks() -> None:
    op.create_table(
        "periodic_tasks",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("interval_seconds", sa.Float(), nullable=True),
        sa.Column("crontab", sa.String(100), nullable=True),
        sa.Column("kwargs", sa.JSON(), nullable=False),
        sa.Column("queue", sa.String(50), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("last_run_at", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=False),
    )


def _create_beat_lease() -> None:
    op.create_table(
        "beat_lease",
        sa.Column("name", sa.String(50), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("beat_lease")
    op.drop_table("periodic_tasks")
    op.drop_index("ix_demo_effects_task_id", table_name="demo_effects")
    op.drop_table("demo_effects")
    op.drop_index("ix_task_ledger_replay_of", table_name="task_ledger")
    op.drop_index("ix_task_ledger_finished_at", table_name="task_ledger")
    op.drop_index("ix_task_ledger_state_updated_at", table_name="task_ledger")
    op.drop_table("task_ledger")
