"""Task ownership: the API caller that submitted each task.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("task_ledger", sa.Column("submitted_by", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_ledger") as batch:
        batch.drop_column("submitted_by")
