"""Reading a certified request off the WSGI environ: id, first-sent date, body.

PROTOCOL.md §1. Pure functions of the environ, so they are easy to test with hostile
input and never touch the store.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

from chttp_core.wire import (
    InvalidMessageIdError,
    is_valid_message_id,
    parse_http_date,
    parse_idempotency_key,
)
from chttp_server.errors import IncompleteBody, InvalidFirstSent, InvalidMessageId

__all__ = ["message_id_of", "first_sent_of", "read_body"]

_ENV_MESSAGE_ID = "HTTP_X_MESSAGE_ID"
_ENV_IDEMPOTENCY_KEY = "HTTP_IDEMPOTENCY_KEY"
_ENV_FIRST_SENT = "HTTP_X_MESSAGE_FIRST_SENT"


def message_id_of(environ: dict[str, Any]) -> str | None:
    """The request's message id, ``None`` if it carries neither header.

    Raises :class:`InvalidMessageId` for a malformed or empty id, or for two headers
    that name different ids.
    """
    raw_message_id = environ.get(_ENV_MESSAGE_ID)
    raw_key = environ.get(_ENV_IDEMPOTENCY_KEY)
    from_message_id = from_key = None
    if raw_message_id is not None:
        from_message_id = raw_message_id.strip(" \t")
        if not is_valid_message_id(from_message_id):
            raise InvalidMessageId(
                "X-Message-ID must be 1-128 characters of A-Z a-z 0-9 - . _ ~ : "
                "(and not . or ..)"
            )
    if raw_key is not None:
        try:
            from_key = parse_idempotency_key(raw_key)
        except InvalidMessageIdError as exc:
            raise InvalidMessageId(exc.detail) from None
    if from_message_id is not None and from_key is not None and from_message_id != from_key:
        raise InvalidMessageId("X-Message-ID and Idempotency-Key name different ids")
    return from_message_id if from_message_id is not None else from_key


def first_sent_of(environ: dict[str, Any]) -> datetime | None:
    """``X-Message-First-Sent`` as an aware datetime; 400 if present but not an HTTP-date.

    :func:`~chttp_core.wire.parse_http_date` turns every parsing failure (an overflowing
    year included) into :class:`ValueError`, so one ``except`` covers the class.
    """
    raw = environ.get(_ENV_FIRST_SENT)
    if raw is None:
        return None
    try:
        return parse_http_date(raw)
    except ValueError:
        raise InvalidFirstSent(f"X-Message-First-Sent is not an HTTP-date: {raw[:64]!r}") from None


def read_body(environ: dict[str, Any]) -> bytes:
    """Read the whole request body and put it back, so the application can read it too.

    The fingerprint needs the body before the application runs. A body without
    ``Content-Length`` is read to its end only when the server says the stream is
    terminated (PEP 3333's ``wsgi.input_terminated``); otherwise it is empty, as WSGI
    requires.
    """
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    length_header = environ.get("CONTENT_LENGTH") or ""
    if length_header.strip():
        try:
            length = int(length_header)
        except ValueError:
            length = 0
        body = _read_exactly(stream, length) if length > 0 else b""
        if len(body) < length:
            raise IncompleteBody(
                f"Content-Length is {length} but the body ended after {len(body)} bytes"
            )
    elif environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        body = b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


#: The most a single ``read`` of the request body asks for.
_CHUNK = 64 * 1024


def _read_exactly(stream: Any, length: int) -> bytes:
    """Read ``length`` bytes, or fewer only if the stream ends first (a short read is
    allowed of a file-like object, so one ``read`` is not proof of a truncated body).

    Reads at most :data:`_CHUNK` at a time: a hostile ``Content-Length`` (``10**20``)
    must end as a short body (400), not as an ``OverflowError`` from ``read`` or an
    attempt to allocate the announced size up front.
    """
    parts: list[bytes] = []
    remaining = length
    while remaining > 0:
        part = stream.read(min(remaining, _CHUNK))
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)
