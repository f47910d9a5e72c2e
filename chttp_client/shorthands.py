"""``get`` / ``post`` / ``put`` / ``patch`` / ``delete``: certified sends by method name.

A small mixin, so the context that owns the step logic (:mod:`chttp_client.context`)
keeps to that one job and the shorthands users call read like httpx's.
"""

from __future__ import annotations

from typing import Any, Callable

import httpx

__all__ = ["SendShorthands"]


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
