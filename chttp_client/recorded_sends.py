"""A certified send as a record: the request kept before it leaves, the answer after.

The journal stores a send's request (method, URL, the caller's headers, body) in the
step's intent commit and its definitive answer when it arrives
(:mod:`chttp_client.context`); a replay rebuilds the very same
:class:`httpx.Response` from the record and raises what it meant. These functions are
that translation, with no journal and no I/O.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

import httpx

from chttp_client import codec
from chttp_client.errors import ProtocolAnswerError, protocol_error_for
from chttp_client.sending import problem_type_of
from chttp_core.wire import HEADER_MESSAGE_URL

__all__ = ["caller_headers", "request_record", "response_record", "message_url_of", "rebuild_response"]

#: Response headers not kept: the body is stored decoded, so these would lie about it.
_DROPPED_RESPONSE_HEADERS = frozenset({"content-encoding", "transfer-encoding", "content-length"})
#: Request headers httpx adds by itself; the recorded request keeps only the caller's.
_AUTOMATIC_REQUEST_HEADERS = frozenset(
    {"host", "content-length", "accept", "accept-encoding", "connection", "user-agent"}
)


def caller_headers(built: httpx.Request) -> list[list[str]]:
    """The headers the caller gave (and the content type httpx derived from ``json=``).

    As lists, the shape they have after a JSON round trip through the journal, so a
    fresh request and a recorded one compare equal.
    """
    return [[key, value] for key, value in built.headers.multi_items()
            if key.lower() not in _AUTOMATIC_REQUEST_HEADERS]


def request_record(method: str, url: str, built: httpx.Request, body: bytes) -> dict[str, Any]:
    """What a send step stores of its request before the first attempt."""
    return {"method": method, "url": url, "headers": caller_headers(built), "body": codec.encode(body)}


def response_record(response: httpx.Response) -> dict[str, Any]:
    """What a send step stores of its definitive answer (the body as read, decoded)."""
    return {
        "status": response.status_code,
        "headers": [[k, v] for k, v in response.headers.multi_items()
                    if k.lower() not in _DROPPED_RESPONSE_HEADERS],
        "body": codec.encode(response.content),
    }


def message_url_of(response: httpx.Response, request_url: str) -> str | None:
    """The absolute ``X-Message-URL`` to acknowledge (PROTOCOL.md §3), if the answer gave one."""
    location = response.headers.get(HEADER_MESSAGE_URL)
    return urljoin(request_url, location) if location else None


def rebuild_response(message_id: str, request: dict[str, Any], stored: dict[str, Any]) -> httpx.Response:
    """The recorded answer as an :class:`httpx.Response`, or the protocol error it meant.

    Identical on a first run and on every replay: a §4 protocol answer raises its
    :class:`~chttp_client.errors.ProtocolAnswerError` subclass carrying the response.
    """
    response = httpx.Response(
        stored["status"],
        headers=[(str(pair[0]), str(pair[1])) for pair in stored["headers"]],
        content=codec.decode(stored["body"]),
        request=httpx.Request(request.get("method", "GET"), request.get("url", "http://invalid/")),
    )
    problem = problem_type_of(response)
    error_class = protocol_error_for(response.status_code, problem)
    if error_class is None:
        return response
    detail = ""
    try:
        document = response.json()
        detail = str(document.get("detail") or document.get("title") or "")
    except (ValueError, AttributeError):
        pass
    error: ProtocolAnswerError = error_class(
        message_id, request.get("method", ""), request.get("url", ""),
        f"{response.status_code} {problem}: {detail}".rstrip(": "), problem or "",
    )
    error.response = response
    raise error
