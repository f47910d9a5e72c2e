"""The one :class:`MetaData` behind every table this project owns.

DESIGN.md: a single SQLAlchemy Core ``MetaData`` and a single Alembic lineage, all
tables prefixed ``chttp_``, so the whole store can sit in a host application's database
beside the host's own tables and migrations. Both halves' tables are declared here: the
receiver's message table and the sender's journal.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

__all__ = [
    "metadata",
    "TABLE_PREFIX",
    "messages",
    "STATE_COMPLETED",
    "STATE_ACKNOWLEDGED",
    "oplogs",
    "oplog_steps",
    "OPLOG_OPEN",
    "OPLOG_DONE",
    "OPLOG_FAILED",
    "STEP_RECORDED",
    "STEP_DONE",
    "KIND_PERSIST",
    "KIND_SEND",
]

TABLE_PREFIX = "chttp_"

#: Deterministic constraint names, so migrations can name what they alter on every dialect.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# -- the receiver's messages ----------------------------------------------------------
#
# One row per certified message, keyed by ``(scope, message_id)`` (docs/protocol.rst §1). A row
# only ever becomes visible to other transactions once it is *completed*: the claim, the
# handler's writes and the stored response commit together, so no "processing" state is
# ever stored. After the sender's acknowledgement the response columns are cleared and the
# row stays as a tombstone until ``expires_at``; the purge deletes by ``expires_at``,
# which is indexed.

STATE_COMPLETED = "completed"
STATE_ACKNOWLEDGED = "acknowledged"

messages = Table(
    "chttp_messages",
    metadata,
    Column("scope", String(255), nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("status", Integer, nullable=True),
    # JSON list of [name, value] pairs: order and repeated names survive intact.
    Column("headers", Text, nullable=True),
    Column("body", LargeBinary, nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("scope", "message_id"),
    CheckConstraint("state IN ('completed', 'acknowledged')", name="state"),
    Index("ix_chttp_messages_expires_at", "expires_at"),
)

# -- the sender's journal --------------------------------------------------------------
#
# One row per call of a resumable function (an "oplog") and one row per step it took,
# in order. Records are JSON text (chttp_client.codec), never pickle. A send step is
# written "recorded" (id + full request) before its first attempt and turned "done"
# with the definitive response in one transaction; ``acknowledged_at`` is set once the
# receiver confirmed our DELETE on ``message_url``. The lease columns keep two
# processes from running one oplog at once (chttp_client.journal).

OPLOG_OPEN = "open"
OPLOG_DONE = "done"
OPLOG_FAILED = "failed"
STEP_RECORDED = "recorded"
STEP_DONE = "done"
KIND_PERSIST = "persist"
KIND_SEND = "send"

oplogs = Table(
    "chttp_oplogs",
    metadata,
    Column("id", String(64), nullable=False),
    Column("function", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    # JSON {"args": [...], "kwargs": {...}}
    Column("arguments", Text, nullable=False),
    Column("state", String(16), nullable=False),
    # JSON {"value": ...} or {"error": {"type", "args", "message"}}
    Column("result", Text, nullable=True),
    Column("lease_owner", String(255), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # Last write of the oplog (its completion once finished); Journal.purge selects by it.
    # Nullable only because migration 0003 added it; the code always sets it.
    Column("updated_at", DateTime(timezone=True), nullable=True),
    # Resumes since the run last made progress (migration 0004): past the journal's
    # max_resume_attempts the oplog is abandoned instead of crash-looping.
    Column("resume_attempts", Integer, nullable=False, server_default="0"),
    # Why the oplog was abandoned (dead-lettered); it is then stored as "failed" (0004).
    Column("abandoned_reason", Text, nullable=True),
    PrimaryKeyConstraint("id"),
    CheckConstraint("state IN ('open', 'done', 'failed')", name="state"),
    Index("ix_chttp_oplogs_state", "state"),
    Index("ix_chttp_oplogs_updated_at", "updated_at"),
)

oplog_steps = Table(
    "chttp_oplog_steps",
    metadata,
    Column("oplog_id", String(64), nullable=False),
    Column("number", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("name", String(1024), nullable=False),
    Column("state", String(16), nullable=False),
    # persist: JSON {"value": ...} or {"error": {...}}; send: {"error": {...}} if it failed
    Column("outcome", Text, nullable=True),
    Column("message_id", String(128), nullable=True),
    Column("fingerprint", String(64), nullable=True),
    # JSON {"method", "url", "headers": [[name, value], ...], "body": {"$bytes": ...}}
    Column("request", Text, nullable=True),
    Column("first_sent_at", DateTime(timezone=True), nullable=True),
    # JSON {"status", "headers": [[name, value], ...], "body": {"$bytes": ...}}
    Column("response", Text, nullable=True),
    Column("message_url", Text, nullable=True),
    Column("acknowledged_at", DateTime(timezone=True), nullable=True),
    # Until then one process (the one that made the answer durable, or a resume_all that
    # claimed it) owns the acknowledgement; nobody else DELETEs it (migration 0004).
    Column("ack_claimed_until", DateTime(timezone=True), nullable=True),
    # Attempts of a send started so far, by every process that ran it (migration 0005):
    # counted before each leaves, so DeadlineExceeded reports them all.
    Column("attempts", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("oplog_id", "number"),
    ForeignKeyConstraint(["oplog_id"], ["chttp_oplogs.id"], ondelete="CASCADE"),
    CheckConstraint("kind IN ('persist', 'send')", name="kind"),
    CheckConstraint("state IN ('recorded', 'done')", name="state"),
    Index("ix_chttp_oplog_steps_message_id", "message_id"),
)
