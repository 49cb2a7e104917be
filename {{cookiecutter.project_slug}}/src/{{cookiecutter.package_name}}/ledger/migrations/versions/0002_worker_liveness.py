"""Worker liveness: heartbeats, the claiming incarnation of each row, recovery counts.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# Every cause of models.Recovery, as of this revision (a later one adds its own).
CAUSES = (
    "stale_queued",
    "stale_published",
    "stale_started",
    "stale_retry",
    "worker_lost",
    "worker_restarted",
)


def upgrade() -> None:
    op.add_column("task_ledger", sa.Column("incarnation", sa.String(32), nullable=True))
    op.create_table(
        "worker_heartbeats",
        sa.Column("incarnation", sa.String(32), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("queues", sa.String(255), nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("last_seen", Timestamp, nullable=False),
    )
    op.create_index("ix_worker_heartbeats_hostname", "worker_heartbeats", ["hostname"])
    op.create_index("ix_worker_heartbeats_last_seen", "worker_heartbeats", ["last_seen"])
    counts = op.create_table(
        "recovery_counts",
        sa.Column("cause", sa.String(32), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
    )
    # Present from the start, so counting is an UPDATE that never races an INSERT.
    op.bulk_insert(counts, [{"cause": cause, "count": 0} for cause in CAUSES])


def downgrade() -> None:
    op.drop_table("recovery_counts")
    op.drop_index("ix_worker_heartbeats_last_seen", table_name="worker_heartbeats")
    op.drop_index("ix_worker_heartbeats_hostname", table_name="worker_heartbeats")
    op.drop_table("worker_heartbeats")
    with op.batch_alter_table("task_ledger") as batch:
        batch.drop_column("incarnation")
