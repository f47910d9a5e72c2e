"""The console's read-only queries over the receiver's messages (``chttp_messages``).

The console reads the tables of :mod:`chttp_core.schema` with SQLAlchemy Core and
nothing else: the store and journal classes may change shape without the console
noticing, and what it shows is exactly what is stored. Every function takes an open
:class:`~sqlalchemy.Connection` and the current time, and returns plain frozen
dataclasses for the templates. The sender's tables have theirs in
:mod:`~chttp_server.console.oplog_queries`; the helpers both use are public here.

What is *not* here: a message being processed right now. Its claim row is uncommitted
(docs/protocol.rst §2), so no other transaction can see it; the oldest row a reader can
see is the oldest *completed* one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import ColumnElement, Connection, LargeBinary, Select, case, func, select

from chttp_core.schema import STATE_ACKNOWLEDGED, STATE_COMPLETED, messages

__all__ = [
    "PAGE_SIZE",
    "PREVIEW_BYTES",
    "MESSAGE_STATES",
    "OUTCOME_UNKNOWN",
    "MessageSummary",
    "MessageFilter",
    "MessageRow",
    "MessageDetail",
    "message_summary",
    "search_messages",
    "get_message",
    "aware",
    "aware_not_null",
    "paged",
]

#: Rows per page of a list.
PAGE_SIZE = 50
#: Bytes of a stored body the console reads for its preview (never the whole body).
PREVIEW_BYTES = 4096
#: The filters a message list offers: the stored states, plus rows past their expiry.
MESSAGE_STATES = (STATE_COMPLETED, STATE_ACKNOWLEDGED, "expired", "outcome-unknown")
#: The filter for completed rows without a stored response: a handler ended the
#: transaction itself after committing (docs/protocol.rst §2.6); retries get 410
#: message-outcome-unknown, and an operator should look at each.
OUTCOME_UNKNOWN = "outcome-unknown"


def aware(moment: datetime | None) -> datetime | None:
    """``moment`` as an aware UTC datetime (SQLite hands them back naive; they are UTC)."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def aware_not_null(moment: datetime | None) -> datetime:
    """:func:`aware` for a ``NOT NULL`` column."""
    result = aware(moment)
    assert result is not None  # a NOT NULL column
    return result


def paged(query: Select[Any], page: int, page_size: int) -> Select[Any]:
    """``query`` limited to page ``page`` (from 1) of ``page_size`` rows."""
    return query.limit(page_size).offset((max(page, 1) - 1) * page_size)


# -- the receiver's messages ------------------------------------------------------------


@dataclass(frozen=True)
class MessageSummary:
    """Counts by state; ``expired`` rows are past their expiry and wait for the purge."""

    completed: int
    acknowledged: int
    expired: int
    oldest_received: datetime | None
    newest_received: datetime | None
    #: Completed rows without a stored response (among ``completed``).
    outcome_unknown: int = 0

    @property
    def total(self) -> int:
        return self.completed + self.acknowledged


@dataclass(frozen=True)
class MessageFilter:
    """A search: substrings of the id and of the scope, a state, a page (from 1)."""

    message_id: str = ""
    scope: str = ""
    state: str = ""
    page: int = 1


@dataclass(frozen=True)
class MessageRow:
    scope: str
    message_id: str
    state: str
    status: int | None
    received_at: datetime
    expires_at: datetime
    body_size: int | None

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True)
class MessageDetail:
    """One message; ``body`` holds at most :data:`PREVIEW_BYTES` of the stored body."""

    row: MessageRow
    fingerprint: str
    headers: list[tuple[str, str]] | None
    body: bytes | None


def message_summary(connection: Connection, now: datetime) -> MessageSummary:
    by_state = {
        row.state: row for row in connection.execute(
            select(messages.c.state, func.count().label("n"),
                   func.min(messages.c.received_at).label("oldest"),
                   func.max(messages.c.received_at).label("newest"),
                   # In the same pass over the rows as the counts by state.
                   func.coalesce(func.sum(case((messages.c.status.is_(None), 1), else_=0)),
                                 0).label("no_response"))
            .group_by(messages.c.state))
    }
    expired = connection.execute(  # indexed: ix_chttp_messages_expires_at
        select(func.count()).select_from(messages).where(messages.c.expires_at <= now)
    ).scalar_one()
    oldest = [aware_not_null(row.oldest) for row in by_state.values() if row.oldest is not None]
    newest = [aware_not_null(row.newest) for row in by_state.values() if row.newest is not None]
    return MessageSummary(
        completed=by_state[STATE_COMPLETED].n if STATE_COMPLETED in by_state else 0,
        acknowledged=by_state[STATE_ACKNOWLEDGED].n if STATE_ACKNOWLEDGED in by_state else 0,
        expired=int(expired),
        oldest_received=min(oldest) if oldest else None,
        newest_received=max(newest) if newest else None,
        outcome_unknown=(int(by_state[STATE_COMPLETED].no_response)
                         if STATE_COMPLETED in by_state else 0),
    )


def _message_conditions(search: MessageFilter, now: datetime) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if search.message_id:
        conditions.append(messages.c.message_id.contains(search.message_id, autoescape=True))
    if search.scope:
        conditions.append(messages.c.scope.contains(search.scope, autoescape=True))
    if search.state == "expired":
        conditions.append(messages.c.expires_at <= now)
    elif search.state == OUTCOME_UNKNOWN:
        conditions.append(messages.c.state == STATE_COMPLETED)
        conditions.append(messages.c.status.is_(None))
    elif search.state:
        conditions.append(messages.c.state == search.state)
    return conditions


def _message_row(row: Any) -> MessageRow:
    return MessageRow(
        scope=row.scope, message_id=row.message_id, state=row.state, status=row.status,
        received_at=aware_not_null(row.received_at), expires_at=aware_not_null(row.expires_at),
        body_size=row.body_size,
    )


_ROW_COLUMNS = (
    messages.c.scope, messages.c.message_id, messages.c.state, messages.c.status,
    messages.c.received_at, messages.c.expires_at,
    func.length(messages.c.body).label("body_size"),
)


def search_messages(connection: Connection, search: MessageFilter, now: datetime, *,
                    page_size: int = PAGE_SIZE) -> tuple[list[MessageRow], int]:
    """One page of matching messages, newest first, and how many match in all."""
    conditions = _message_conditions(search, now)
    total = connection.execute(
        select(func.count()).select_from(messages).where(*conditions)).scalar_one()
    query = (select(*_ROW_COLUMNS).where(*conditions)
             .order_by(messages.c.received_at.desc(), messages.c.scope, messages.c.message_id))
    rows = connection.execute(paged(query, search.page, page_size))
    return [_message_row(row) for row in rows], int(total)


def get_message(connection: Connection, scope: str, message_id: str) -> MessageDetail | None:
    preview = func.substr(messages.c.body, 1, PREVIEW_BYTES, type_=LargeBinary)
    row = connection.execute(
        select(*_ROW_COLUMNS, messages.c.fingerprint, messages.c.headers,
               preview.label("preview"))
        .where(messages.c.scope == scope, messages.c.message_id == message_id)
    ).first()
    if row is None:
        return None
    return MessageDetail(
        row=_message_row(row),
        fingerprint=row.fingerprint,
        headers=_headers(row.headers),
        body=bytes(row.preview) if row.preview is not None else None,
    )


def _headers(stored: str | None) -> list[tuple[str, str]] | None:
    if stored is None:
        return None
    try:
        return [(str(name), str(value)) for name, value in json.loads(stored)]
    except (ValueError, TypeError):
        return [("(unreadable headers)", stored)]
