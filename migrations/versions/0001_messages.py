"""The receiver's message table.

Revision ID: 0001_messages
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_messages"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chttp_messages",
        sa.Column("scope", sa.String(255), nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("headers", sa.Text(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "message_id", name="pk_chttp_messages"),
        sa.CheckConstraint(
            "state IN ('completed', 'acknowledged')", name="ck_chttp_messages_state"
        ),
    )
    op.create_index("ix_chttp_messages_expires_at", "chttp_messages", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_chttp_messages_expires_at", table_name="chttp_messages")
    op.drop_table("chttp_messages")
