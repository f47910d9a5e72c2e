"""``get`` / ``post`` / ``put`` / ``patch`` / ``delete``: certified sends by method name.

A small mixin, so the context that owns the step logic (:mod:`chttp_client.context`)
keeps to that one job and the shorthands users call read like httpx's;
:class:`AsyncSendShorthands` is the same for the awaited contexts (``async def``
resumable functions, an ASGI view's ``current_message()``).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import httpx

__all__ = ["SendShorthands", "AsyncSendShorthands"]


class SendShorthands:
    """``post(url, …)`` is ``send("POST", url, …)``; the class defines :meth:`send`."""

    #: The certified send the shorthands call (``ResumableContext.send``).
    send: Callable[..., httpx.Response]

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.send("GET", url, **options)

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.send("POST", url, **options)

    def put(self, url: str, **options: Any) -> httpx.Response:
        return self.send("PUT", url, **options)

    def patch(self, url: str, **options: Any) -> httpx.Response:
        return self.send("PATCH", url, **options)

    def delete(self, url: str, **options: Any) -> httpx.Response:
        return self.send("DELETE", url, **options)


class AsyncSendShorthands:
    """``await post(url, …)`` is ``await send("POST", url, …)``; the class defines :meth:`send`."""

    #: The awaited certified send the shorthands call.
    send: Callable[..., Awaitable[httpx.Response]]

    async def get(self, url: str, **options: Any) -> httpx.Response:
        return await self.send("GET", url, **options)

    async def post(self, url: str, **options: Any) -> httpx.Response:
        return await self.send("POST", url, **options)

    async def put(self, url: str, **options: Any) -> httpx.Response:
        return await self.send("PUT", url, **options)

    async def patch(self, url: str, **options: Any) -> httpx.Response:
        return await self.send("PATCH", url, **options)

    async def delete(self, url: str, **options: Any) -> httpx.Response:
        return await self.send("DELETE", url, **options)
