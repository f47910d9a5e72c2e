"""Reading a certified request off an ASGI ``http`` scope: id, first-sent date, body.

docs/protocol.rst §1 and §4. A thin ASGI adapter over :mod:`chttp_server.decisions`,
which holds the rules, as :mod:`chttp_server.incoming` is for WSGI: these functions only
find the values in the scope and the ``receive`` channel: the id, the first-sent date,
the body, the principal (``scope["user"]``) and the path below the mount point.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Awaitable, Callable, MutableMapping

from chttp_server.decisions import (
    check_request_length,
    near_miss_header,
    parse_first_sent,
    parse_message_id,
    warn_near_miss,
)
from chttp_server.errors import IncompleteBody

__all__ = ["Message", "Receive", "Send", "Scope", "header", "message_id_of", "first_sent_of",
           "read_body", "replaying_receive", "user_scope", "require_for_methods", "split_path",
           "environ_for_telemetry"]

# The shapes Starlette's own types use, so an app typed for Starlette wraps cleanly.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def header(scope: Scope, name: bytes) -> str | None:
    """The value of header ``name`` (lower-case bytes), repeated fields joined by ``", "``
    as a WSGI server joins them (RFC 9110 §5.3), so both front ends see the same value;
    ``None`` if absent. Decoded as latin-1, the HTTP/1.1 octets as they came."""
    values = [value for key, value in scope.get("headers", ()) if key.lower() == name]
    if not values:
        return None
    return ", ".join(value.decode("latin-1") for value in values)


def message_id_of(scope: Scope) -> str | None:
    """The request's message id, ``None`` without one; 400 for a malformed or
    conflicting one."""
    found = parse_message_id(header(scope, b"x-message-id"), header(scope, b"idempotency-key"))
    if found is None:
        names = (key.decode("latin-1") for key, _value in scope.get("headers", ()))
        name = near_miss_header(names)
        if name is not None:
            warn_near_miss(name, scope.get("method", "GET"),
                           scope.get("root_path", "") + scope.get("path", ""))
    return found


def first_sent_of(scope: Scope) -> datetime | None:
    """``X-Message-First-Sent`` as an aware datetime; 400 if present but not an HTTP-date."""
    return parse_first_sent(header(scope, b"x-message-first-sent"))


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, 413 past ``limit`` bytes (§4).

    Refused from ``Content-Length`` before anything is read, or as soon as the chunks
    pass the cap. A client that disconnects before the end (or sends less than its
    ``Content-Length``) gets 400 incomplete-body: the fingerprint of a truncated body
    would make its complete retry look like a reused id.
    """
    declared = header(scope, b"content-length")
    length: int | None = None
    if declared is not None and declared.strip().isdigit():
        length = int(declared.strip())
        check_request_length(length, limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise IncompleteBody("the client disconnected before the end of the body")
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            check_request_length(total, limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if length is not None and total < length:
        raise IncompleteBody(f"Content-Length is {length} but the body ended after {total} bytes")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def replaying_receive(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the application the body already read, once, whole;
    afterwards it waits on the real channel (which then says ``http.disconnect``)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_again() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return receive_again


def user_scope(scope: Scope) -> str:
    """The default principal: Starlette's ``scope["user"]`` when authenticated, else ``""``.

    ``AuthenticationMiddleware`` puts the user there; its ``identity`` (or, for users
    that do not define one, ``display_name``) names the id space (docs/protocol.rst §1).
    """
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return ""
    try:
        identity = user.identity
    except (AttributeError, NotImplementedError):
        identity = getattr(user, "display_name", "")
    return str(identity or "")


def require_for_methods(*methods: str) -> Callable[[Scope], bool]:
    """A ``require_id`` policy: these methods must carry a message id (else 400)."""
    wanted = frozenset(method.upper() for method in methods)
    return lambda scope: str(scope.get("method", "GET")).upper() in wanted


def split_path(scope: Scope) -> tuple[str, str]:
    """``(root_path, path below it)``: servers differ on whether ``path`` repeats the
    mount point (the ASGI spec says it does; older servers left it out)."""
    root_path = str(scope.get("root_path", "") or "")
    path = str(scope.get("path", "") or "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path):]
    return root_path, path


def environ_for_telemetry(scope: Scope) -> dict[str, Any]:
    """The few WSGI-style keys the telemetry reads (method, path, trace headers)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": str(scope.get("method", "")),
        "PATH_INFO": str(scope.get("path", "")),
    }
    for name in (b"traceparent", b"tracestate", b"baggage"):
        value = header(scope, name)
        if value is not None:
            environ["HTTP_" + name.decode().upper()] = value
    return environ
