"""Attempts of a certified send, counted across processes.

``chttp_oplog_steps.attempts`` counts the attempts of a send step that were started,
whichever process made them: the intent commit counts the first (it leaves right after),
and every later attempt — a retry, or the first attempt of a resumed run — is counted
in the journal before it leaves. So the ``DeadlineExceeded`` of a send that several
processes retried reports every attempt, not only the last process's. Other steps keep 0.

Nullable with a server default of 0, so SQLite adds it in place (a rebuild of the table
would cascade into nothing here, but keeps the lineage's habit of plain ``ADD COLUMN``).

Revision ID: 0005_send_attempts
Revises: 0004_oplog_dead_letter
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_send_attempts"
down_revision = "0004_oplog_dead_letter"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("chttp_oplog_steps", sa.Column("attempts", sa.Integer(), nullable=False,
                                                 server_default="0"))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite >= 3.35): a batch rebuild would cascade.
    op.drop_column("chttp_oplog_steps", "attempts")
