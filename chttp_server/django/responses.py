"""Django responses in and out of the message store: what is stored, what is replayed.

A stored response must come back byte for byte (docs/protocol.rst §2), so it is stored
as Django's WSGI handler would send it: the status, the headers in order (``Set-Cookie``
lines included, one per cookie) and the whole body — a streaming response is collected,
up to the cap, first. A replay rebuilds an :class:`~django.http.HttpResponse` from those
parts; the middleware outside the certified one then treats it like the original.
Protocol refusals are rendered from :meth:`~chttp_server.ProtocolError.problem`, the
same bytes the WSGI middleware sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Iterable

from asgiref.sync import async_to_sync

from django.http import HttpResponse, HttpResponseBase

from chttp_core.wire import PROBLEM_CONTENT_TYPE
from chttp_server.errors import ProtocolError, problem_body

__all__ = ["CollectedResponse", "collect", "rebuild", "problem", "method_not_allowed", "no_content"]

Headers = list[tuple[str, str]]

_SET_COOKIE = "set-cookie"


@dataclass(frozen=True)
class CollectedResponse:
    """A view's response as it will be stored (``body`` is empty when ``too_large``)."""

    status: int
    headers: Headers
    body: bytes
    too_large: bool


def collect(response: HttpResponseBase, limit: int) -> CollectedResponse:
    """The parts of ``response`` to store; a streaming response is consumed and refilled.

    A streaming body is generated here, inside the message's transaction, so whatever
    its generator writes commits with it.

    No more than ``limit`` bytes are held: past it the body is dropped and
    ``too_large`` set (the message then rolls back with 500, §4).
    """
    headers: Headers = [(str(name), str(value)) for name, value in response.items()]
    headers += [("Set-Cookie", morsel.OutputString()) for morsel in response.cookies.values()]
    if response.streaming:
        # Not response.close(): it sends request_finished, whose receiver closes a
        # connection left in a transaction — the message's. Django's handler closes
        # the response (and the consumed iterator) once it has been sent.
        if response.is_async:
            # An async view's async generator (served under ASGI): consumed on the
            # event loop; its ORM calls come back to this thread (sync_to_async is
            # thread-sensitive), so its writes are in the message's transaction too.
            chunks, too_large = async_to_sync(_gather_async)(response.streaming_content, limit)
        else:
            chunks, too_large = _gather(response.streaming_content, limit)
        body = b"" if too_large else b"".join(chunks)
        # Refilled with an iterator of the same kind, which Django serves without a
        # warning under the same handler as the original.
        response.streaming_content = _once(body) if response.is_async else [body]
    else:
        body = response.content
        too_large = len(body) > limit
    return CollectedResponse(response.status_code, headers, b"" if too_large else body, too_large)


def _gather(content: Iterable[bytes], limit: int) -> tuple[list[bytes], bool]:
    """The chunks of ``content`` up to ``limit`` bytes; past it none, and ``True``."""
    chunks: list[bytes] = []
    size = 0
    too_large = False
    for chunk in content:
        size += len(chunk)
        if size > limit:
            too_large = True
        elif not too_large:
            chunks.append(bytes(chunk))
    return ([] if too_large else chunks), too_large


async def _gather_async(content: AsyncIterable[bytes], limit: int) -> tuple[list[bytes], bool]:
    """:func:`_gather` of an async iterator."""
    chunks: list[bytes] = []
    size = 0
    too_large = False
    async for chunk in content:
        size += len(chunk)
        if size > limit:
            too_large = True
        elif not too_large:
            chunks.append(bytes(chunk))
    return ([] if too_large else chunks), too_large


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def rebuild(status: int, headers: Headers, body: bytes) -> HttpResponse:
    """An :class:`HttpResponse` that Django's handler sends as ``status``, ``headers``, ``body``."""
    response = HttpResponse(body, status=status)
    del response.headers["Content-Type"]  # only the stored headers, in their order
    for name, value in headers:
        if name.lower() == _SET_COOKIE:
            response.cookies.load(value)
        else:
            response.headers[name] = value
    return response


def problem(error: ProtocolError) -> HttpResponse:
    """The problem+json answer of a refusal (docs/protocol.rst §4)."""
    status, headers, body = error.problem()
    return rebuild(status, headers, body)


def method_not_allowed() -> HttpResponse:
    """405 for the message resource (§3), which has GET, HEAD and DELETE only."""
    body = problem_body(405, "method-not-allowed", "Method not allowed")
    return rebuild(405, [("Content-Type", PROBLEM_CONTENT_TYPE),
                         ("Allow", "GET, HEAD, DELETE")], body)


def no_content() -> HttpResponse:
    """204 with no headers of its own: an acknowledged message (§3)."""
    return rebuild(204, [], b"")
