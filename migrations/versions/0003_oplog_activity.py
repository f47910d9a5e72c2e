"""Oplog retention: when each oplog was last active, indexed for the purge.

``chttp_oplogs.updated_at`` is set by every write of an oplog (its first commit, each
later commit of a run, a lease taken over, its end), so for a finished oplog it is its
completion time and for a receiver handler's oplog (never marked done) its last
activity. ``Journal.purge`` selects by it. Existing rows are backfilled with their
completion time, else their creation time. The column stays nullable: SQLite cannot add
a NOT NULL column without a default except by rebuilding the table, which would cascade
into ``chttp_oplog_steps`` (foreign keys are on); the code always writes it.

Revision ID: 0003_oplog_activity
Revises: 0002_oplogs
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_oplog_activity"
down_revision = "0002_oplogs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("chttp_oplogs", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE chttp_oplogs SET updated_at = COALESCE(finished_at, created_at)")
    op.create_index("ix_chttp_oplogs_updated_at", "chttp_oplogs", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_chttp_oplogs_updated_at", table_name="chttp_oplogs")
    # A plain DROP COLUMN (SQLite >= 3.35): a batch rebuild would cascade into the steps.
    op.drop_column("chttp_oplogs", "updated_at")
