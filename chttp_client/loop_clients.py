"""One ``httpx.AsyncClient`` per running event loop, for the async runs of one journal.

An ``AsyncClient``'s connection pool belongs to the event loop that first used it: a
client kept across ``asyncio.run(...)`` calls holds connections of a closed loop. So a
journal that was given no ``async_http_client`` makes one client per loop on the first
async run there and shares it between all the runs of that loop (a hundred functions
under one ``gather`` share one pool, and runs awaited one after the other reuse its
connections). It is closed once the loop has had no run for :data:`IDLE_CLOSE` seconds,
or when the loop shuts down (``asyncio.run`` cancels the waiting closer, which then
closes at once); a run that ends cancelled closes it at once when it was the last.
Making a client costs milliseconds (its TLS context), so closing it after every run
would cost more than the run itself. A client the host gives is used as is and never
closed here: it belongs to the host's loop.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import httpx

__all__ = ["LoopClients", "IDLE_CLOSE"]

#: Seconds a loop's client stays open without a run (httpx keeps idle connections 5 s).
IDLE_CLOSE = 5.0


@dataclass
class _Shared:
    client: httpx.AsyncClient
    runs: int = 0
    #: Bumped whenever the last run ends: only the newest closer may close.
    generation: int = 0


class LoopClients:
    """The async clients of one journal, by event loop (see the module docstring)."""

    def __init__(self, make: Callable[[], httpx.AsyncClient], *,
                 given: httpx.AsyncClient | None = None) -> None:
        self._make = make
        self._given = given
        self._shared: dict[asyncio.AbstractEventLoop, _Shared] = {}
        self._lock = threading.Lock()   # loops of several threads may share one journal
        self._closers: set[asyncio.Task[None]] = set()

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
                    shared.generation += 1
            current = asyncio.current_task()
            if last and current is not None and current.cancelling():
                await self._close_if_idle(loop, shared, shared.generation)
            elif last:
                closer = loop.create_task(self._close_when_idle(loop, shared, shared.generation))
                self._closers.add(closer)           # a strong reference until it is done
                closer.add_done_callback(self._closers.discard)

    async def _close_when_idle(self, loop: asyncio.AbstractEventLoop, shared: _Shared,
                               generation: int) -> None:
        try:
            await asyncio.sleep(IDLE_CLOSE)
        except asyncio.CancelledError:   # the loop shuts down: close now, and end quietly
            pass
        await self._close_if_idle(loop, shared, generation)

    async def _close_if_idle(self, loop: asyncio.AbstractEventLoop, shared: _Shared,
                             generation: int) -> None:
        with self._lock:
            idle = (shared.runs == 0 and shared.generation == generation
                    and self._shared.get(loop) is shared)
            if idle:
                del self._shared[loop]
        if idle:
            await shared.client.aclose()
