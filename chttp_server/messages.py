"""A certified message as the receiver keeps it: its key, its stored row, the clock.

Plain values, free of SQL and WSGI: the protocol decisions (:mod:`chttp_server.decisions`)
read them, the message store (:mod:`chttp_server.store`) makes them from its rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any

from chttp_core.schema import STATE_ACKNOWLEDGED

__all__ = ["Headers", "MessageKey", "StoredMessage", "aware", "headers_json", "stored_message",
           "utcnow"]

Headers = list[tuple[str, str]]


def utcnow() -> datetime:
    """The receiver's default clock."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class MessageKey:
    """``(scope, message_id)``: the stored key of docs/protocol.rst §1."""

    scope: str
    message_id: str


@dataclass(frozen=True)
class StoredMessage:
    """A committed message row, as the middleware needs it to answer a retry."""

    key: MessageKey
    fingerprint: str
    state: str
    status: int | None
    headers: Headers | None
    body: bytes | None
    received_at: datetime
    expires_at: datetime

    @property
    def acknowledged(self) -> bool:
        return self.state == STATE_ACKNOWLEDGED

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at


def aware(moment: datetime) -> datetime:
    """``moment`` in UTC: SQLite hands timestamps back naive; they were stored as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def headers_json(headers: Headers) -> str:
    """A response's headers as the store keeps them: the text of ``json.dumps(headers)``.

    Written directly for the ``(name, value)`` string pairs every front end collects
    (it runs for every stored response, and ``json.dumps`` spends most of its time
    choosing an encoder); anything else goes to ``json.dumps`` itself. The tests compare
    the two (tests/core/test_wire_formats.py).
    """
    try:
        return "[" + ", ".join([f"[{_json_string(name)}, {_json_string(value)}]"
                                for name, value in headers]) + "]"
    except (TypeError, ValueError):  # not pairs of str: let json decide (or refuse)
        return json.dumps(headers)


def stored_message(row: Any) -> StoredMessage:
    """The message of a ``chttp_messages`` row: a SQLAlchemy Row or a store_dbapi named
    tuple (the same attribute names); headers decoded from their JSON."""
    headers = json.loads(row.headers) if row.headers is not None else None
    return StoredMessage(
        key=MessageKey(row.scope, row.message_id),
        fingerprint=row.fingerprint,
        state=row.state,
        status=row.status,
        headers=[(name, value) for name, value in headers] if headers is not None else None,
        body=bytes(row.body) if row.body is not None else None,
        received_at=aware(row.received_at),
        expires_at=aware(row.expires_at),
    )
