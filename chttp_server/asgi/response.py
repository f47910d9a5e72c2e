"""The application's answer to a certified request, held back until it is stored.

An ASGI application sends its response as messages (``http.response.start``, then
``http.response.body`` chunks). A certified response may reach the client only once it
is stored and committed with the application's writes (docs/protocol.rst §2), so the
middleware hands the application a ``send`` that buffers (up to the store's cap) and,
at the last chunk, calls back to store, commit and only then pass the response on.
Doing that *inside* the last ``send`` — not after the application returns — is what
lets Starlette's background tasks, which run after the response is sent, run after the
commit too (and outside the message's transaction).
"""

from __future__ import annotations

from typing import Awaitable, Callable

from chttp_server.asgi.incoming import Message, Send

__all__ = ["BufferedResponse", "send_response"]

Headers = list[tuple[str, str]]


class BufferedResponse:
    """What the application answered, collected whole before anything is sent."""

    def __init__(self, limit: int, on_complete: Callable[[BufferedResponse], Awaitable[None]]) -> None:
        self.limit = limit
        self.status = 0
        self.headers: Headers = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        #: True once the last body chunk arrived and ``on_complete`` ran (or began).
        self.complete = False
        #: What ``on_complete`` raised: the middleware answers it after the app returns,
        #: whatever the application made of the exception.
        self.failure: BaseException | None = None
        self._on_complete = on_complete

    @property
    def started(self) -> bool:
        return self.status != 0

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    async def send(self, message: Message) -> None:
        """The ``send`` the application is given."""
        kind = message["type"]
        if self.complete:
            if kind == "http.response.body" and not message.get("body"):
                return  # an empty closing chunk after the end: harmless
            raise RuntimeError(f"the application sent {kind!r} after its response ended")
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the application started its response twice")
            self.status = int(message["status"])
            self.headers = [(bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
                            for name, value in message.get("headers", ())]
            return
        if kind != "http.response.body":
            return  # extensions (e.g. http.response.trailers) are not stored: dropped
        if not self.started:
            raise RuntimeError("the application sent a body before http.response.start")
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size > self.limit:
            self.too_large = True
            self.chunks.clear()
        elif chunk:
            self.chunks.append(bytes(chunk))
        if not message.get("more_body", False):
            self.complete = True
            try:
                await self._on_complete(self)
            except BaseException as error:
                self.failure = error
                raise


async def send_response(send: Send, status: int, headers: Headers, body: bytes, *,
                        head: bool = False) -> None:
    """Send a whole response (``head``: the headers of GET without the content)."""
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in headers],
    })
    await send({"type": "http.response.body", "body": b"" if head else body})
