"""Reading a certified request off the WSGI environ: id, first-sent date, body.

docs/protocol.rst §1. A thin WSGI adapter over :mod:`chttp_server.decisions`, which
holds the rules: these functions only find the values in the environ (Django's
``request.META`` has the same keys, so they serve it too). They never touch the store.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

from chttp_server.decisions import (
    DEFAULT_MAX_REQUEST_BYTES,
    check_request_length,
    near_miss_header,
    parse_first_sent,
    parse_message_id,
    warn_near_miss,
)
from chttp_server.errors import IncompleteBody

__all__ = ["message_id_of", "first_sent_of", "read_body"]

_ENV_MESSAGE_ID = "HTTP_X_MESSAGE_ID"
_ENV_IDEMPOTENCY_KEY = "HTTP_IDEMPOTENCY_KEY"
_ENV_FIRST_SENT = "HTTP_X_MESSAGE_FIRST_SENT"


def message_id_of(environ: dict[str, Any]) -> str | None:
    """The request's message id, ``None`` if it carries neither header.

    Raises :class:`InvalidMessageId` for a malformed or empty id, or for two headers
    that name different ids.
    """
    found = parse_message_id(environ.get(_ENV_MESSAGE_ID), environ.get(_ENV_IDEMPOTENCY_KEY))
    if found is None:
        _notice_near_miss(environ)
    return found


def _notice_near_miss(environ: dict[str, Any]) -> None:
    """Warn once when a header looks meant as the id (decisions.near_miss_header)."""
    names = (key[5:].replace("_", "-") for key in environ if key.startswith("HTTP_"))
    name = near_miss_header(names)
    if name is not None:
        warn_near_miss(name.title(), environ.get("REQUEST_METHOD", "GET"),
                       environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))


def first_sent_of(environ: dict[str, Any]) -> datetime | None:
    """``X-Message-First-Sent`` as an aware datetime; 400 if present but not an HTTP-date."""
    return parse_first_sent(environ.get(_ENV_FIRST_SENT))


def read_body(environ: dict[str, Any], limit: int = DEFAULT_MAX_REQUEST_BYTES) -> bytes:
    """Read the whole request body and put it back, so the application can read it too.

    The fingerprint needs the body before the application runs. A body without
    ``Content-Length`` is read to its end only when the server says the stream is
    terminated (PEP 3333's ``wsgi.input_terminated``); otherwise it is empty, as WSGI
    requires. A body over ``limit`` bytes is 413 (docs/protocol.rst §4): refused from
    ``Content-Length`` before anything is read, or as soon as a chunked body passes it.

    The body is held once: a stream that hands it over in one read is kept as that one
    ``bytes`` object (``io.BytesIO`` shares it until written); pieces are gathered in
    one growing buffer that becomes the application's stream, never joined into a copy.
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
        check_request_length(length, limit)
        if length > 0:
            first: bytes = stream.read(length)
            if len(first) == length:  # the common case: one read, kept as it is
                environ["wsgi.input"] = io.BytesIO(first)
                environ["CONTENT_LENGTH"] = str(length)
                return first
            buffer = _read_up_to(stream, length, limit, first)
        else:
            buffer = io.BytesIO()
        if buffer.getbuffer().nbytes < length:
            raise IncompleteBody(
                f"Content-Length is {length} but the body ended after "
                f"{buffer.getbuffer().nbytes} bytes"
            )
    elif environ.get("wsgi.input_terminated"):
        buffer = _read_up_to(stream, None, limit)
    else:
        buffer = io.BytesIO()
    body = buffer.getvalue()  # shares the buffer's bytes until someone writes to it
    buffer.seek(0)
    environ["wsgi.input"] = buffer
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


#: How much of a body without Content-Length is asked for per read.
_CHUNK = 64 * 1024


def _read_up_to(stream: Any, length: int | None, limit: int,
                first: bytes | None = None) -> io.BytesIO:
    """Read ``length`` bytes (or to the end if ``None``) into one buffer, 413 past ``limit``.

    ``first``: what a first ``read`` already returned (short of ``length``: the one-read
    case never comes here, :func:`read_body` keeps it). Fewer bytes only if the stream
    ends first (a short read is allowed of a file-like object, so one ``read`` is not
    proof of a truncated body).
    """
    if first is None:
        first = stream.read(length if length is not None else _CHUNK)
    buffer = io.BytesIO()
    buffer.write(first)
    total = len(first)
    check_request_length(total, limit)
    while first and (length is None or total < length):
        first = stream.read(_CHUNK if length is None else min(_CHUNK, length - total))
        total += len(first)
        check_request_length(total, limit)
        buffer.write(first)
    return buffer
