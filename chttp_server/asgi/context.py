"""What an ASGI view sees of its certified request: :func:`current_message`.

The same context as the WSGI front end's ``environ["chttp.context"]``
(:class:`chttp_server.context.CertifiedContext`), awaited: the message's identity, the
one database transaction the message record shares with the view — as an
``AsyncConnection`` and a lazily made ``AsyncSession`` — and the view's own certified
sends (``await message.post(...)``), journaled with ids derived from this message's
``(scope, id)`` so a retried incoming message re-sends the same outgoing messages.

The sends are the sender's resumable steps driven by its asynchronous executor
(:func:`chttp_client.incoming.open_incoming_context_async`: the same step logic, ids and
oplog SQL as every other certified send): the journal's I/O runs in worker threads and
the HTTP exchange on the loop's ``httpx.AsyncClient``, so neither blocks the loop.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, MutableMapping

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from chttp_client.shorthands import AsyncSendShorthands

if TYPE_CHECKING:  # the journal and the async context load on a view's first send, not before
    import httpx

    from chttp_client.async_context import AsyncResumableContext
    from chttp_client.journal import Journal

__all__ = ["AsyncCertifiedContext", "current_message"]

_current: ContextVar[AsyncCertifiedContext | None] = ContextVar("chttp_asgi_message", default=None)


def current_message() -> AsyncCertifiedContext | None:
    """The certified request this view serves, ``None`` for a request without an id.

    Set by :class:`chttp_server.asgi.CertifiedMiddleware` for the application's whole
    run, so ``async def`` views, ``def`` views (which Starlette runs in a thread with
    a copy of the context) and dependencies all see it.
    """
    return _current.get()


class AsyncCertifiedContext(AsyncSendShorthands):
    """The certified request being processed: its id, scope and shared transaction."""

    def __init__(
        self,
        *,
        message_id: str,
        scope: str,
        fingerprint: str,
        connection: AsyncConnection,
        received_at: datetime,
        expires_at: datetime,
        asgi_scope: MutableMapping[str, Any],
        journal: Callable[[], Journal] | None = None,
        handler_send_deadline: timedelta | None = None,
    ) -> None:
        self.message_id = message_id
        #: The principal whose id space the message belongs to (docs/protocol.rst §1).
        self.scope = scope
        self.fingerprint = fingerprint
        self.received_at = received_at
        self.expires_at = expires_at
        #: The ASGI ``http`` scope of the request.
        self.asgi_scope = asgi_scope
        #: Always False inside a view: a replay answers from the store and never runs it.
        self.replayed = False
        self.handler_send_deadline = handler_send_deadline
        self._connection: AsyncConnection | None = connection
        self._session: AsyncSession | None = None
        self._journal = journal
        self._outgoing: AsyncResumableContext | None = None
        #: The loop's HTTP client for the view's sends, released with the request.
        self._exits = AsyncExitStack()

    # -- the shared transaction ------------------------------------------------------

    @property
    def connection(self) -> AsyncConnection:
        """The connection the claim, the view and the stored response share."""
        if self._connection is None:
            raise RuntimeError(
                "the certified request's transaction has ended (committed with the stored "
                "response): work done after it, such as a background task, is not part of "
                "the message")
        return self._connection

    @property
    def session(self) -> AsyncSession:
        """An ``AsyncSession`` bound to the shared connection, made on first use.

        It joins the request's transaction (``conditional_savepoint``): ``await
        session.commit()`` only flushes into it, and the middleware commits once, with
        the stored response. Undo part of the work inside ``session.begin_nested()``.
        """
        if self._session is None:
            self._session = AsyncSession(bind=self.connection, autoflush=True)
        return self._session

    # -- the view as a sender (chttp_client.incoming) --------------------------------

    async def _outgoing_context(self) -> AsyncResumableContext:
        if self._outgoing is None:
            if self._journal is None:
                raise RuntimeError("this middleware has no journal for certified sends")
            from chttp_client.incoming import open_incoming_context_async

            journal = await asyncio.to_thread(self._journal)   # made once; blocking I/O
            client = await self._exits.enter_async_context(journal.async_clients.client())
            self._outgoing = await open_incoming_context_async(
                journal, scope=self.scope, message_id=self.message_id, client=client,
                send_deadline=self.handler_send_deadline)
        return self._outgoing

    async def persist(self, value_or_callable: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Record a value once per incoming message; it survives the view's rollback.

        A value, a callable or a coroutine function (awaited on the first run only);
        every retry of the message gets the recorded value back.
        """
        outgoing = await self._outgoing_context()
        return await outgoing.persist(value_or_callable, *args, **kwargs)

    async def checkpoint(self) -> None:
        """Make the values persisted so far durable now."""
        outgoing = await self._outgoing_context()
        await outgoing.checkpoint()

    async def send(self, method: str, url: str, **options: Any) -> httpx.Response:
        """A certified send whose id derives from this message's ``(scope, id)`` and step."""
        outgoing = await self._outgoing_context()
        return await outgoing.send(method, url, **options)

    # -- the end of the request ------------------------------------------------------

    def flush_and_close_session(self) -> None:
        """Push the context's session's pending writes into the transaction and close it
        (synchronous: run through the executor, before the response is stored)."""
        if self._session is not None:
            session, self._session = self._session, None
            try:
                session.sync_session.flush()
            finally:
                session.sync_session.close()

    async def close(self) -> None:
        """The request is over: journal buffered send records, forget the connection."""
        self._connection = None
        if self._outgoing is not None:
            from chttp_client.incoming import close_incoming_context_async

            outgoing, self._outgoing = self._outgoing, None
            try:
                await close_incoming_context_async(outgoing)
            finally:
                await self._exits.aclose()

    def __repr__(self) -> str:
        return f"<AsyncCertifiedContext scope={self.scope!r} message_id={self.message_id!r}>"

