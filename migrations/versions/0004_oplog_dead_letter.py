"""Dead-lettered oplogs and claimed acknowledgements.

``chttp_oplogs.resume_attempts`` counts resumes of an open oplog that made no progress
(taken, then no commit): ``Journal.resume_all`` abandons an oplog past its
``max_resume_attempts`` instead of crash-looping on it for ever.
``chttp_oplogs.abandoned_reason`` says why an oplog was abandoned (non-determinism, too
many attempts, ``Journal.abandon``). An abandoned oplog is stored as ``failed`` with
that reason and an ``OplogAbandonedError`` result: widening the ``state`` CHECK
constraint would rebuild the table on SQLite, which cascades into
``chttp_oplog_steps`` (foreign keys are on) and would delete every step.

``chttp_oplog_steps.ack_claimed_until``: the process that made an answer durable (or a
``resume_all`` that claimed it) sends its acknowledgement; nobody else DELETEs it until
the claim lapses, so each message is acknowledged once.

Every column is nullable or has a server default, so SQLite adds them in place.

Revision ID: 0004_oplog_dead_letter
Revises: 0003_oplog_activity
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_oplog_dead_letter"
down_revision = "0003_oplog_activity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("chttp_oplogs", sa.Column("resume_attempts", sa.Integer(), nullable=False,
                                            server_default="0"))
    op.add_column("chttp_oplogs", sa.Column("abandoned_reason", sa.Text(), nullable=True))
    op.add_column("chttp_oplog_steps", sa.Column("ack_claimed_until", sa.DateTime(timezone=True),
                                                 nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite >= 3.35): a batch rebuild would cascade into the steps.
    op.drop_column("chttp_oplog_steps", "ack_claimed_until")
    op.drop_column("chttp_oplogs", "abandoned_reason")
    op.drop_column("chttp_oplogs", "resume_attempts")
