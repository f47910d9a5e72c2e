"""The sender's journal: oplogs and their ordered steps.

Revision ID: 0002_oplogs
Revises: 0001_messages
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_oplogs"
down_revision = "0001_messages"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chttp_oplogs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("function", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_chttp_oplogs"),
        sa.CheckConstraint("state IN ('open', 'done', 'failed')", name="ck_chttp_oplogs_state"),
    )
    op.create_index("ix_chttp_oplogs_state", "chttp_oplogs", ["state"])
    op.create_table(
        "chttp_oplog_steps",
        sa.Column("oplog_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(1024), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("message_id", sa.String(128), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("request", sa.Text(), nullable=True),
        sa.Column("first_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("message_url", sa.Text(), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("oplog_id", "number", name="pk_chttp_oplog_steps"),
        sa.ForeignKeyConstraint(
            ["oplog_id"], ["chttp_oplogs.id"],
            name="fk_chttp_oplog_steps_oplog_id_chttp_oplogs", ondelete="CASCADE",
        ),
        sa.CheckConstraint("kind IN ('persist', 'send')", name="ck_chttp_oplog_steps_kind"),
        sa.CheckConstraint("state IN ('recorded', 'done')", name="ck_chttp_oplog_steps_state"),
    )
    op.create_index("ix_chttp_oplog_steps_message_id", "chttp_oplog_steps", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_chttp_oplog_steps_message_id", table_name="chttp_oplog_steps")
    op.drop_table("chttp_oplog_steps")
    op.drop_index("ix_chttp_oplogs_state", table_name="chttp_oplogs")
    op.drop_table("chttp_oplogs")
