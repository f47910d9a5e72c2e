"""The receiver's message table, declared on the project's shared :data:`metadata`.

One row per certified message, keyed by ``(scope, message_id)`` (PROTOCOL.md §1). A row
only ever becomes visible to other transactions once it is *completed*: the claim, the
handler's writes and the stored response commit together, so no "processing" state is
ever stored. After the sender's acknowledgement the response columns are cleared and the
row stays as a tombstone until ``expires_at``; the purge deletes by ``expires_at``,
which is indexed.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from chttp_client.schema import metadata

__all__ = ["metadata", "messages", "STATE_COMPLETED", "STATE_ACKNOWLEDGED"]

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
