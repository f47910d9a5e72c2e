"""The receiver's protocol decisions, as plain functions: no sockets, no database, no WSGI.

What a request means and what to answer are the same for every front end, so they are
decided here once (the sans-IO shape of h11): the WSGI middleware, the Flask extension
and the Django middleware read headers and bodies their own way, hand the values to
these functions, and carry out the answer. A front end never re-implements a rule.

* :func:`parse_message_id`, :func:`parse_first_sent` — the request headers of
  docs/protocol.rst §1 (400 for a malformed value).
* :func:`near_miss_header`, :func:`warn_near_miss` — a header that looks meant as the
  id (``Message-ID``, ``X-Idempotency-Key``, ``Idempotency_Key``) on a request with
  none: it is *not* certified, so it is warned about once (issue 25).
* :func:`check_request_length` — the body cap of §4 (413), before and while reading.
* :func:`incoming_message` — the certified message: id, scope, fingerprint, first-sent.
* :func:`check_fresh_claim` — a claim of an id older than the retention (412, §4).
* :func:`stored_answer` — a retry of a completed id: replay, 422 (§2), or 410 (§3).
* :func:`outcome_for` — store the handler's response, or roll back (§2), or 500 if it
  is too large to store.
* :func:`message_url`, :func:`message_headers`, :func:`replay_headers` — the headers
  every certified answer carries (§2, §3).

Every refusal is raised as the :class:`~chttp_server.errors.ProtocolError` of §4; a
front end renders it (``to_response()`` for WebOb, ``problem()`` for anything else).
"""

from __future__ import annotations

import enum
import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable
from urllib.parse import quote

from chttp_core.wire import (
    HEADER_MESSAGE_EXPIRES,
    HEADER_MESSAGE_URL,
    HEADER_REPLAYED,
    InvalidMessageIdError,
    fingerprint,
    format_http_date,
    is_valid_message_id,
    parse_http_date,
    parse_idempotency_key,
)
from chttp_server.errors import (
    InvalidFirstSent,
    InvalidMessageId,
    MessageAcknowledged,
    MessageExpired,
    MessageIdReused,
    MessageOutcomeUnknown,
    MessageTooOld,
    RequestTooLarge,
    ResponseTooLarge,
)
from chttp_server.messages import MessageKey, StoredMessage

__all__ = [
    "IncomingMessage",
    "Outcome",
    "DEFAULT_MAX_REQUEST_BYTES",
    "parse_message_id",
    "parse_first_sent",
    "near_miss_header",
    "warn_near_miss",
    "check_request_length",
    "incoming_message",
    "check_fresh_claim",
    "stored_answer",
    "outcome_for",
    "means_try_again",
    "message_url",
    "message_headers",
    "replay_headers",
]

Headers = list[tuple[str, str]]

#: The default cap on a certified request's body (docs/protocol.rst §4): 10 MiB.
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class IncomingMessage:
    """A certified request as the protocol sees it (docs/protocol.rst §1)."""

    message_id: str
    scope: str
    fingerprint: str
    #: ``X-Message-First-Sent``, or ``None`` when the sender did not say.
    first_sent: datetime | None = None

    @property
    def key(self) -> MessageKey:
        return MessageKey(self.scope, self.message_id)


class Outcome(enum.Enum):
    """What becomes of a handler's response (docs/protocol.rst §2)."""

    #: Store it with the handler's writes and commit: every retry gets it again.
    STORE = "store"
    #: Roll back: nothing happened, the key stays free for a fresh retry.
    ROLL_BACK = "roll back"


def parse_message_id(x_message_id: str | None, idempotency_key: str | None) -> str | None:
    """The id named by ``X-Message-ID`` / ``Idempotency-Key``; ``None`` if neither is sent.

    Raises :class:`InvalidMessageId` for a malformed or empty id, or for two headers
    that name different ids (§1).
    """
    from_message_id = from_key = None
    if x_message_id is not None:
        from_message_id = x_message_id.strip(" \t")
        if not is_valid_message_id(from_message_id):
            raise InvalidMessageId(
                "X-Message-ID must be 1-128 characters of A-Z a-z 0-9 - . _ ~ :"
            )
    if idempotency_key is not None:
        try:
            from_key = parse_idempotency_key(idempotency_key)
        except InvalidMessageIdError as exc:
            raise InvalidMessageId(exc.detail) from None
    if from_message_id is not None and from_key is not None and from_message_id != from_key:
        raise InvalidMessageId("X-Message-ID and Idempotency-Key name different ids")
    return from_message_id if from_message_id is not None else from_key


#: Header names (lower case, ``_`` as ``-``) a sender may have written for
#: ``X-Message-ID`` or ``Idempotency-Key``. Sent instead of them, the request is not
#: certified: passed through untouched, and a retry runs the handler again.
NEAR_MISS_HEADERS = frozenset({
    "message-id", "messageid", "x-messageid", "x-msg-id", "msg-id", "x-message-key",
    "x-idempotency-key", "idempotencykey", "x-idempotencykey", "idempotency-id",
    "x-idempotency-id", "x-message-id", "idempotency-key",
})
#: The names the protocol reads (docs/protocol.rst §1), exactly as written on the wire.
_RECOGNISED = frozenset({"x-message-id", "idempotency-key"})

log = logging.getLogger("chttp_server")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def near_miss_header(names: Iterable[str]) -> str | None:
    """The first of a request's header ``names`` that looks meant as its message id.

    Called for requests that carry no recognised id header, so any hit means the
    sender's id is being ignored. A WSGI server folds ``_`` into ``-`` for us
    (``Idempotency_Key`` arrives as ``Idempotency-Key`` and *is* read); ASGI hands over
    raw names, where ``idempotency_key`` is not the header and is reported.
    """
    for name in names:
        lowered = name.lower()
        if lowered in _RECOGNISED:
            continue
        if lowered.replace("_", "-") in NEAR_MISS_HEADERS:
            return name
    return None


def warn_near_miss(name: str, method: str, path: str) -> bool:
    """Log, once per header name and process, that ``name`` was not taken as an id.

    Returns True if this call logged. A WARNING, so that it shows with no logging set
    up: a misspelt header silently switches exactly-once off.
    """
    key = name.lower().replace("_", "-")
    with _warned_lock:
        if key in _warned:
            return False
        _warned.add(key)
    log.warning(
        "%s %s carries a %r header but no X-Message-ID or Idempotency-Key: it is NOT "
        "certified (passed through untouched; a retry runs it again). Send X-Message-ID "
        "(or Idempotency-Key) instead. Shown once per header name.", method, path, name)
    return True


def parse_first_sent(raw: str | None) -> datetime | None:
    """``X-Message-First-Sent`` as an aware datetime; 400 if present but not an HTTP-date."""
    if raw is None:
        return None
    try:
        return parse_http_date(raw)
    except (ValueError, OverflowError):
        raise InvalidFirstSent(f"X-Message-First-Sent is not an HTTP-date: {raw[:64]!r}") from None


def check_request_length(length: int, limit: int) -> None:
    """413 ``request-too-large`` if a body of ``length`` bytes (so far) exceeds ``limit``.

    Called with ``Content-Length`` before reading, and with the running total while a
    body without one is read, so no more than ``limit`` bytes are ever held (§4).
    """
    if length > limit:
        raise RequestTooLarge(f"a certified request's body is limited to {limit} bytes")


def incoming_message(
    method: str,
    path: str,
    query: str,
    body: bytes,
    *,
    message_id: str,
    scope: str,
    first_sent: datetime | None = None,
) -> IncomingMessage:
    """The certified message of a request whose id is ``message_id`` (§1).

    ``path`` is the full path as the sender wrote it (script name included), ``query``
    the raw query string: both go into the fingerprint.
    """
    digest = fingerprint(method, path, query, body)
    return IncomingMessage(message_id=message_id, scope=scope, fingerprint=digest,
                           first_sent=first_sent)


def check_fresh_claim(message: IncomingMessage, now: datetime, retention: timedelta) -> None:
    """412 for a new claim of an id first sent before the retention window (§4).

    The id may have been processed and forgotten already: running it now could run it
    twice, so the receiver refuses to judge.
    """
    if message.first_sent is not None and message.first_sent < now - retention:
        raise MessageTooOld(
            f"this receiver keeps messages for {retention}; a message first sent at "
            f"{format_http_date(message.first_sent)} may already have been processed and "
            "forgotten",
            message_id=message.message_id,
        )


def stored_answer(stored: StoredMessage, fingerprint: str | None, now: datetime) -> StoredMessage:
    """The stored row to replay for a retry, or the refusal (§2 step 4, §3).

    ``fingerprint`` is the retry's (``None`` for a GET of the message resource, which
    names the message by its URL): a different one is 422. An acknowledged row is 410
    ``message-acknowledged``; an expired one 410 ``message-expired``; one committed
    without its response (a handler that ended the transaction itself) 410
    ``message-outcome-unknown``, never a replay of nothing.
    """
    message_id = stored.key.message_id
    if fingerprint is not None and stored.fingerprint != fingerprint:
        raise MessageIdReused(
            "this id was already used for a request with a different method, path, "
            "query or body",
            message_id=message_id,
        )
    if stored.acknowledged:
        raise MessageAcknowledged(message_id=message_id)
    if stored.expired(now):
        raise MessageExpired(message_id=message_id)
    if stored.status is None or stored.headers is None or stored.body is None:
        # Committed without its response: a handler ended the transaction itself (§2).
        raise MessageOutcomeUnknown(
            "this message was processed but its handler ended the transaction itself and "
            "no response was stored; it is not run again, because part of its work may "
            "already be done",
            message_id=message_id,
        )
    return stored


def means_try_again(status: int) -> bool:
    """True for answers that tell the sender to come back later, which are never stored.

    A 5xx is docs/protocol.rst §2's rule. 429 (RFC 6585 §4) is a 4xx but says "not
    now", and the sender retries it (§5): stored, it would be replayed to every retry
    until the sender's deadline, so it rolls back like a 5xx.
    """
    return status >= 500 or status == 429


def outcome_for(status: int, *, too_large: bool, limit: int, message_id: str) -> Outcome:
    """Store the handler's response or roll back; 500 if it must be stored but cannot.

    ``too_large``: the body passed ``limit`` bytes (the caller stopped collecting it).
    """
    if means_try_again(status):
        return Outcome.ROLL_BACK
    if too_large:
        raise ResponseTooLarge(f"the response body exceeds {limit} bytes", message_id=message_id)
    return Outcome.STORE


def message_url(script_name: str, prefix: str, message_id: str) -> str:
    """Where the stored response lives (§3), under the application's mount point."""
    # An id without ``:`` (the only character of the id alphabet quote() changes) is
    # its own quoting: skip quote()'s Python on every certified answer.
    quoted = quote(message_id, safe="") if _QUOTED.search(message_id) else message_id
    return script_name + prefix + quoted


#: Characters ``quote(…, safe="")`` would escape: anything but A-Z a-z 0-9 ``_ . - ~``.
_QUOTED = re.compile(r"[^A-Za-z0-9_.~-]")


def message_headers(url: str, expires_at: datetime) -> Headers:
    """``X-Message-URL`` and ``X-Message-Expires``: on every certified answer (§2)."""
    return [(HEADER_MESSAGE_URL, url), (HEADER_MESSAGE_EXPIRES, format_http_date(expires_at))]


def replay_headers(stored: StoredMessage, url: str) -> Headers:
    """The stored headers byte for byte, the message headers, and ``Idempotent-Replayed``."""
    assert stored.headers is not None, "an acknowledged row is never replayed"
    return [*stored.headers, *message_headers(url, stored.expires_at), (HEADER_REPLAYED, "true")]
