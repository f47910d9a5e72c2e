"""One ``httpx.AsyncClient`` per running event loop, for the async runs of one journal.

An ``AsyncClient``'s connection pool belongs to the event loop that first used it: a
client kept across ``asyncio.run(...)`` calls holds connections of a closed loop. So a
journal that was given no ``async_http_client`` makes one client per loop on the first
async run there, shares it between all the runs of that loop (a hundred functions under
one ``gather`` share one pool), and closes it when the loop's last run ends. A client
the host gives is used as is and never closed here: it belongs to the host's loop.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import httpx

__all__ = ["LoopClients"]


@dataclass
class _Shared:
    client: httpx.AsyncClient
    runs: int = 0


class LoopClients:
    """The async clients of one journal, by event loop (see the module docstring)."""

    def __init__(self, make: Callable[[], httpx.AsyncClient], *,
                 given: httpx.AsyncClient | None = None) -> None:
        self._make = make
        self._given = given
        self._shared: dict[asyncio.AbstractEventLoop, _Shared] = {}
        self._lock = threading.Lock()   # loops of several threads may share one journal

    @asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        """The client of the running loop, for the duration of one run."""
        if self._given is not None:
            yield self._given
            return
        loop = asyncio.get_running_loop()
        with self._lock:
            shared = self._shared.get(loop)
            if shared is None:
                shared = self._shared[loop] = _Shared(self._make())
            shared.runs += 1
        try:
            yield shared.client
        finally:
            with self._lock:
                shared.runs -= 1
                last = shared.runs == 0
                if last:
                    del self._shared[loop]
            if last:
                await shared.client.aclose()
