"""Wire definitions of Certified HTTP shared by the sender and the receiver.

Both halves must agree byte for byte on header names, the id syntax, the request
fingerprint and the problem types (``../shared/PROTOCOL.md`` §1 and §4), so they live
here, once. This module imports nothing beyond the standard library: the sender stays
free of WebOb and the receiver reads the same constants.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime

__all__ = [
    "HEADER_MESSAGE_ID",
    "HEADER_IDEMPOTENCY_KEY",
    "HEADER_FIRST_SENT",
    "HEADER_MESSAGE_URL",
    "HEADER_MESSAGE_EXPIRES",
    "HEADER_REPLAYED",
    "PROBLEM_CONTENT_TYPE",
    "MESSAGE_ID_PATTERN",
    "MAX_MESSAGE_ID_LENGTH",
    "Problem",
    "InvalidMessageIdError",
    "is_valid_message_id",
    "parse_idempotency_key",
    "format_idempotency_key",
    "fingerprint",
    "format_http_date",
    "parse_http_date",
]

HEADER_MESSAGE_ID = "X-Message-ID"
HEADER_IDEMPOTENCY_KEY = "Idempotency-Key"
HEADER_FIRST_SENT = "X-Message-First-Sent"
HEADER_MESSAGE_URL = "X-Message-URL"
HEADER_MESSAGE_EXPIRES = "X-Message-Expires"
HEADER_REPLAYED = "Idempotent-Replayed"

#: RFC 9457 §3: the media type of every protocol error.
PROBLEM_CONTENT_TYPE = "application/problem+json"

MAX_MESSAGE_ID_LENGTH = 128
#: PROTOCOL.md §1: 1–128 characters of ``A–Z a–z 0–9 - . _ ~ :``.
MESSAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9\-._~:]{1,128}")


class Problem:
    """The stable problem types of PROTOCOL.md §4 (the ``type`` member of problem+json).

    A sender switches on these strings, so they never change once published.
    """

    INVALID_MESSAGE_ID = "invalid-message-id"
    MESSAGE_ID_REQUIRED = "message-id-required"
    INVALID_FIRST_SENT = "invalid-first-sent"
    INCOMPLETE_BODY = "incomplete-body"
    MESSAGE_IN_PROGRESS = "message-in-progress"
    MESSAGE_ACKNOWLEDGED = "message-acknowledged"
    MESSAGE_EXPIRED = "message-expired"
    MESSAGE_TOO_OLD = "message-too-old"
    MESSAGE_ID_REUSED = "message-id-reused"
    RESPONSE_TOO_LARGE = "response-too-large"
    REQUEST_TOO_LARGE = "request-too-large"
    STORE_UNAVAILABLE = "store-unavailable"
    SCHEMA_OUT_OF_DATE = "schema-out-of-date"
    MESSAGE_NOT_FOUND = "message-not-found"


class InvalidMessageIdError(ValueError):
    """A message-id header that breaks PROTOCOL.md §1's syntax."""

    def __init__(self, detail: str, raw: str | None = None) -> None:
        super().__init__(detail, raw)
        self.detail = detail
        self.raw = raw

    def __str__(self) -> str:
        return self.detail


def is_valid_message_id(value: str) -> bool:
    """True if ``value`` is a well-formed message id."""
    return MESSAGE_ID_PATTERN.fullmatch(value) is not None


def parse_idempotency_key(raw: str) -> str:
    """Return the id carried by an ``Idempotency-Key`` header value.

    The IETF draft (draft-ietf-httpapi-idempotency-key-header-07 §2) makes the value an
    RFC 8941 sf-string, ``"abc"``. Many clients send the bare token, which PROTOCOL.md §1
    accepts too. sf-string escapes (``\\"``, ``\\\\``) cannot occur in a valid id, so a
    value containing a backslash is rejected rather than unescaped.
    """
    value = raw.strip(" \t")
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    elif value.startswith('"') or value.endswith('"'):
        raise InvalidMessageIdError("Idempotency-Key has an unbalanced quote", raw)
    if not is_valid_message_id(value):
        raise InvalidMessageIdError(
            "Idempotency-Key must be 1-128 characters of A-Z a-z 0-9 - . _ ~ :", raw
        )
    return value


def format_idempotency_key(message_id: str) -> str:
    """Render ``message_id`` as the RFC 8941 sf-string the IETF draft expects."""
    return f'"{message_id}"'


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """SHA-256 over method, path, query string and body (PROTOCOL.md §1), as hex.

    Each part is length-prefixed so that moving bytes between parts (a ``?`` into the
    path, say) can never produce the same digest.
    """
    digest = hashlib.sha256()
    for part in (method.upper().encode("ascii"), path.encode("utf-8", "surrogateescape"),
                 query.encode("utf-8", "surrogateescape"), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def format_http_date(moment: datetime) -> str:
    """An RFC 9110 §5.6.7 IMF-fixdate, the form of ``X-Message-Expires``."""
    return format_datetime(moment.astimezone(timezone.utc), usegmt=True)


def parse_http_date(raw: str) -> datetime:
    """Parse an HTTP-date into an aware UTC datetime; :class:`ValueError` if it is not one."""
    try:
        moment = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"not an HTTP-date: {raw!r}") from exc
    if moment is None:  # pragma: no cover - older Pythons returned None
        raise ValueError(f"not an HTTP-date: {raw!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
