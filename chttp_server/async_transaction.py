"""The asynchronous executor of a message's transaction: the same steps, awaited.

Why not an async copy: the steps of a certified message (begin, claim, decide replay /
refuse / run, complete, commit or roll back, the one translation of store errors into
503 + ``Retry-After``) and the store's SQL are written once, in
:class:`~chttp_server.transaction.MessageTransaction` and
:class:`~chttp_server.store.MessageStore`. Two copies would drift, and every fault test
would have to be written twice.

How: this is the shape of SQLAlchemy's own asyncio layer. An ``AsyncEngine`` is a
synchronous ``Engine`` whose DB-API connections are adapters over asyncpg, psycopg 3's
async connection or aiosqlite; each adapter call awaits the driver's coroutine from
inside a greenlet (``sqlalchemy.util.greenlet_spawn``), so synchronous code run in that
greenlet suspends the *coroutine* that spawned it, never the event loop. Each step here
is the synchronous step, run that way::

    txn = AsyncMessageTransaction(store, key, retry_after=1)   # store on engine.sync_engine
    await txn.begin()
    stored = await txn.claim(message)        # MessageTransaction.claim, byte for byte
    ... the ASGI app runs, awaiting on txn.connection (an AsyncConnection) ...
    await txn.complete(status, headers, body)
    await txn.close()

A synchronous step can therefore never block the loop by mistake: on an async driver a
database call made outside the greenlet raises ``MissingGreenlet`` instead of waiting.
The synchronous front ends (WSGI, Flask, Django, ``sessions=``) call
:class:`MessageTransaction` directly: their path is unchanged, not one call longer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import greenlet_spawn

from chttp_core.telemetry import NOOP
from chttp_server.decisions import IncomingMessage, Outcome
from chttp_server.messages import MessageKey, StoredMessage
from chttp_server.store import MessageStore
from chttp_server.transaction import Headers, MessageTransaction

__all__ = ["AsyncMessageTransaction", "run_step"]

T = TypeVar("T")


async def run_step(step: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run one synchronous step of the core in a greenlet: its I/O awaits on the loop."""
    return await greenlet_spawn(step, *args, **kwargs)


class AsyncMessageTransaction:
    """:class:`MessageTransaction` driven from a coroutine (see the module docstring)."""

    __slots__ = ("sync", "async_engine", "_async_connection")

    def __init__(self, store: MessageStore, key: MessageKey, *, async_engine: AsyncEngine,
                 retry_after: int, observation: Any = NOOP) -> None:
        if store.engine is not async_engine.sync_engine:
            raise ValueError("the store must live on async_engine.sync_engine")
        #: The synchronous core this object drives: every rule lives there.
        self.sync = MessageTransaction(store, key, retry_after=retry_after,
                                       observation=observation)
        self.async_engine = async_engine
        self._async_connection: AsyncConnection | None = None

    @property
    def connection(self) -> AsyncConnection:
        """The message's connection as the application awaits it (claim, app and stored
        response share it: one transaction)."""
        if self._async_connection is None:
            self._async_connection = AsyncConnection(self.async_engine, self.sync.connection)
        return self._async_connection

    @property
    def outcome(self) -> Outcome | None:
        return self.sync.outcome

    @property
    def received_at(self) -> datetime | None:
        return self.sync.received_at

    @property
    def expires_at(self) -> datetime:
        return self.sync.expires_at

    async def begin(self) -> AsyncMessageTransaction:
        await greenlet_spawn(self.sync.begin)
        return self

    async def claim(self, message: IncomingMessage) -> StoredMessage | None:
        return await greenlet_spawn(self.sync.claim, message)

    async def begin_and_claim(self, message: IncomingMessage) -> StoredMessage | None:
        """:meth:`begin` then :meth:`claim` in one greenlet (one switch fewer per request)."""
        return await greenlet_spawn(self._begin_and_claim, message)

    def _begin_and_claim(self, message: IncomingMessage) -> StoredMessage | None:
        self.sync.begin()
        return self.sync.claim(message)

    async def run(self, steps: Callable[[MessageTransaction], T]) -> T:
        """Run ``steps(core)`` — several synchronous steps of the core and of the
        front end's own clean-up — in one greenlet."""
        return await greenlet_spawn(steps, self.sync)

    def handler_errors(self) -> Any:
        """The core's guard around the handler (a plain context manager: no I/O of its own)."""
        return self.sync.handler_errors()

    async def complete(self, status: int, headers: Headers, body: bytes, *,
                       too_large: bool = False, limit: int = 0) -> bool:
        return await greenlet_spawn(self.sync.complete, status, headers, body,
                                    too_large=too_large, limit=limit)

    async def fetch(self) -> StoredMessage | None:
        return await greenlet_spawn(self.sync.fetch)

    async def acknowledge(self) -> StoredMessage | None:
        return await greenlet_spawn(self.sync.acknowledge)

    async def abort(self) -> None:
        await greenlet_spawn(self.sync.abort)

    async def close(self) -> None:
        self._async_connection = None
        if self.sync.has_connection:
            await greenlet_spawn(self.sync.close)

    async def __aenter__(self) -> AsyncMessageTransaction:
        return await self.begin()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        try:
            if exc is not None and self.sync.outcome is None:
                await self.abort()
        finally:
            await self.close()

    def __repr__(self) -> str:
        return f"<AsyncMessageTransaction over {self.sync!r}>"
