"""Wire definitions of Certified HTTP shared by the sender and the receiver.

Both halves must agree byte for byte on header names, the id syntax, the request
fingerprint and the problem types (docs/protocol.rst §1 and §4), so they live
here, once. This module imports nothing beyond the standard library: the sender stays
free of WebOb and the receiver reads the same constants.
"""

from __future__ import annotations

import hashlib
import re
import struct
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

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
    "MAX_SCOPE_LENGTH",
    "Problem",
    "InvalidMessageIdError",
    "is_valid_message_id",
    "parse_idempotency_key",
    "format_idempotency_key",
    "scope_key",
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
#: docs/protocol.rst §1: 1–128 characters of ``A–Z a–z 0–9 - . _ ~ :`` (the dot-segments
#: ``.`` and ``..`` are excluded by :func:`is_valid_message_id`, not by the pattern).
MESSAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9\-._~:]{1,128}")
#: The dot-segments of RFC 3986 §5.2.4: every URL library removes them, so a message
#: URL ending in one could never be reached (docs/protocol.rst §1).
_DOT_SEGMENTS = frozenset({".", ".."})
#: Width of the store's ``scope`` column (characters); :func:`scope_key` never exceeds it.
MAX_SCOPE_LENGTH = 255


class Problem:
    """The stable problem types of docs/protocol.rst §4 (the ``type`` member of problem+json).

    A sender switches on these strings, so they never change once published.
    """

    INVALID_MESSAGE_ID = "invalid-message-id"
    MESSAGE_ID_REQUIRED = "message-id-required"
    INVALID_FIRST_SENT = "invalid-first-sent"
    INCOMPLETE_BODY = "incomplete-body"
    MESSAGE_IN_PROGRESS = "message-in-progress"
    MESSAGE_ACKNOWLEDGED = "message-acknowledged"
    MESSAGE_EXPIRED = "message-expired"
    MESSAGE_OUTCOME_UNKNOWN = "message-outcome-unknown"
    MESSAGE_TOO_OLD = "message-too-old"
    MESSAGE_ID_REUSED = "message-id-reused"
    RESPONSE_TOO_LARGE = "response-too-large"
    REQUEST_TOO_LARGE = "request-too-large"
    STORE_UNAVAILABLE = "store-unavailable"
    SCHEMA_OUT_OF_DATE = "schema-out-of-date"
    MESSAGE_NOT_FOUND = "message-not-found"


class InvalidMessageIdError(ValueError):
    """A message-id header that breaks docs/protocol.rst §1's syntax."""

    def __init__(self, detail: str, raw: str | None = None) -> None:
        super().__init__(detail, raw)
        self.detail = detail
        self.raw = raw

    def __str__(self) -> str:
        return self.detail


def is_valid_message_id(value: str) -> bool:
    """True if ``value`` is a well-formed message id (docs/protocol.rst §1).

    ``.`` and ``..`` match the character set but are refused: as the last segment of
    ``/chttp/messages/<id>`` every URL library (``urljoin``, browsers, proxies) removes
    them, so the acknowledging ``DELETE`` would reach another resource.
    """
    return MESSAGE_ID_PATTERN.fullmatch(value) is not None and value not in _DOT_SEGMENTS


def parse_idempotency_key(raw: str) -> str:
    """Return the id carried by an ``Idempotency-Key`` header value (docs/protocol.rst §1).

    The IETF draft (draft-ietf-httpapi-idempotency-key-header-07 §2) makes the value an
    RFC 8941 *Item* whose bare item is an sf-string, ``"abc"``. It is parsed as RFC 8941
    §4.2 says: parameters after the string (``"abc";p=1``) are well-formed and ignored;
    any other item type is refused — an sf-binary ``:YWJj:``, an inner list ``("a")``,
    a list (``"a", "b"``, which is also what two ``Idempotency-Key`` lines become once a
    server joins them). Escapes are unescaped first, and the result must still be a
    valid id, which no escaped character is.

    Many clients send the bare id unquoted, which docs/protocol.rst §1 accepts too, as the
    whole value and without parameters. An unquoted value starting with ``:`` is an
    sf-binary (or a broken one) and refused, even though ``:`` may appear inside an id.
    """
    value = raw.strip(" \t")
    try:
        if value.startswith('"'):
            key, end = _sf_string(value, 0)
            _sf_parameters(value, end)
        elif value.startswith(":"):
            raise _StructuredFieldError("Idempotency-Key is an sf-binary, not an sf-string")
        elif value.startswith("("):
            raise _StructuredFieldError("Idempotency-Key is an inner list, not an sf-string")
        else:
            key = value
    except _StructuredFieldError as exc:
        raise InvalidMessageIdError(str(exc), raw) from None
    if not is_valid_message_id(key):
        raise InvalidMessageIdError(
            "Idempotency-Key must be 1-128 characters of A-Z a-z 0-9 - . _ ~ : "
            "(and not . or ..)", raw
        )
    return key


def format_idempotency_key(message_id: str) -> str:
    """Render ``message_id`` as the RFC 8941 sf-string the IETF draft expects.

    A sender never builds a header a receiver must refuse: an invalid id (``..``, say)
    raises :class:`InvalidMessageIdError` here, before anything is sent.
    """
    if not is_valid_message_id(message_id):
        raise InvalidMessageIdError(f"not a valid message id: {message_id[:64]!r}", message_id)
    return f'"{message_id}"'


def scope_key(principal: str) -> str:
    """The ``scope`` stored for ``principal``: itself, or a digest form that fits.

    docs/protocol.rst §4 lets a field the store cannot hold be refused or made to fit, the
    same on every database. We make it fit, because a principal is chosen by the
    deployment's authentication, not by the client, and refusing a legitimate (if long)
    user name would make certified requests impossible for that user. A principal is
    kept as it is when it has at most :data:`MAX_SCOPE_LENGTH` characters, holds no
    character a database refuses in text (NUL, lone surrogates) and does not itself
    look like a digest form. Anything else becomes ``<readable prefix>~sha256-<64 hex>``,
    at most :data:`MAX_SCOPE_LENGTH` characters, the digest taken over the whole
    principal. The two forms never overlap (a principal in digest form is itself
    digested), so two different principals never share a scope: no truncation can let
    one user replay or acknowledge another's messages. It is a pure function, so every
    worker and host computes the same key.
    """
    if (len(principal) <= MAX_SCOPE_LENGTH and _STORABLE_TEXT.fullmatch(principal)
            and _SCOPE_DIGEST_FORM.search(principal) is None):
        return principal
    digest = hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()
    suffix = f"{_SCOPE_DIGEST_MARK}{digest}"
    prefix = _UNSTORABLE_CHARACTER.sub("?", principal[: MAX_SCOPE_LENGTH - len(suffix)])
    return prefix + suffix


_SCOPE_DIGEST_MARK = "~sha256-"
_SCOPE_DIGEST_FORM = re.compile(re.escape(_SCOPE_DIGEST_MARK) + r"[0-9a-f]{64}\Z")
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")
_STORABLE_TEXT = re.compile("[^\x00\ud800-\udfff]*")


# -- RFC 8941 items, as far as an Idempotency-Key needs them ---------------------------


class _StructuredFieldError(ValueError):
    """A value that is not the RFC 8941 item the header must be."""


_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_NUMBER = re.compile(r"-?(?:[0-9]{1,12}\.[0-9]{1,3}|[0-9]{1,15})")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_BYTES = re.compile(r":[A-Za-z0-9+/=]*:")
_BOOLEAN = re.compile(r"\?[01]")


def _sf_string(text: str, pos: int) -> tuple[str, int]:
    """RFC 8941 §4.2.5: the string starting at ``text[pos] == '"'``; returns (value, end)."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        pos += 1
        if char == "\\":
            if pos >= len(text) or text[pos] not in '"\\':
                raise _StructuredFieldError("Idempotency-Key has an invalid escape")
            out.append(text[pos])
            pos += 1
        elif char == '"':
            return "".join(out), pos
        elif not " " <= char <= "~":
            raise _StructuredFieldError("Idempotency-Key has a character no sf-string holds")
        else:
            out.append(char)
    raise _StructuredFieldError("Idempotency-Key has an unterminated string")


def _sf_bare_item(text: str, pos: int) -> int:
    """RFC 8941 §4.2.3.1: skip one bare item (a parameter's value); returns its end."""
    if text.startswith('"', pos):
        return _sf_string(text, pos)[1]
    for pattern in (_NUMBER, _TOKEN, _BYTES, _BOOLEAN):
        match = pattern.match(text, pos)
        if match is not None:
            return match.end()
    raise _StructuredFieldError("Idempotency-Key has a malformed parameter value")


def _sf_parameters(text: str, pos: int) -> None:
    """RFC 8941 §4.2.3.2: ``*( ";" *SP key [ "=" bare-item ] )`` up to the end of ``text``."""
    while pos < len(text):
        if text[pos] != ";":
            raise _StructuredFieldError(
                "Idempotency-Key must be one sf-string item (with optional parameters)"
            )
        pos += 1
        while text.startswith(" ", pos):
            pos += 1
        match = _KEY.match(text, pos)
        if match is None:
            raise _StructuredFieldError("Idempotency-Key has a malformed parameter name")
        pos = match.end()
        if text.startswith("=", pos):
            pos = _sf_bare_item(text, pos + 1)


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """SHA-256 over method, path, query string and body (docs/protocol.rst §1), as hex.

    Each part is length-prefixed so that moving bytes between parts (a ``?`` into the
    path, say) can never produce the same digest.
    """
    verb = method.upper().encode("ascii")
    target = path.encode("utf-8", "surrogateescape")
    arguments = query.encode("utf-8", "surrogateescape")
    # Hashed as one string: the same digest as one update per piece, in one call (it
    # runs on every certified request).
    return hashlib.sha256(b"".join((
        _LENGTH.pack(len(verb)), verb, _LENGTH.pack(len(target)), target,
        _LENGTH.pack(len(arguments)), arguments, _LENGTH.pack(len(body)), body,
    ))).hexdigest()


#: A fingerprint part's length prefix: 8 bytes, big-endian.
_LENGTH = struct.Struct(">Q")


_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                "Dec")


def format_http_date(moment: datetime) -> str:
    """An RFC 9110 §5.6.7 IMF-fixdate, the form of ``X-Message-Expires``.

    The text ``email.utils.format_datetime(…, usegmt=True)`` writes (the tests compare
    them), formatted here: it is on every certified answer, and the standard library's
    goes through a time tuple and a zone check first.
    """
    utc = moment.astimezone(timezone.utc)
    return (f"{_DAY_NAMES[utc.weekday()]}, {utc.day:02d} {_MONTH_NAMES[utc.month - 1]} "
            f"{utc.year:04d} {utc.hour:02d}:{utc.minute:02d}:{utc.second:02d} GMT")


def parse_http_date(raw: str) -> datetime:
    """Parse an HTTP-date into an aware UTC datetime; :class:`ValueError` if it is not one.

    Every way the standard library can fail on hostile text becomes :class:`ValueError`,
    so a caller catches only that: a date that parses but cannot be moved to UTC
    (``Fri, 31 Dec 9999 23:59:59 -1200`` is in year 10000) raises :class:`OverflowError`
    inside :mod:`datetime`, a year 0 a :class:`ValueError`, a non-string a
    :class:`TypeError` or :class:`AttributeError`.
    """
    try:
        moment = parsedate_to_datetime(raw.strip())
        if moment is None:  # pragma: no cover - older Pythons returned None
            raise ValueError("no date")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)
    except (TypeError, ValueError, IndexError, AttributeError, ArithmeticError) as exc:
        raise ValueError(f"not an HTTP-date: {str(raw)[:64]!r}") from exc
