"""``CertifiedMiddleware`` for ASGI: exactly-once processing for any ASGI application.

A pure ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, whose task and
context-variable handling breaks streaming and ``contextvars``)::

    from chttp_server.asgi import CertifiedMiddleware
    app.add_middleware(CertifiedMiddleware, engine=engine, sessions=Session)

The flow of one certified request is the WSGI middleware's (docs/protocol.rst §2)::

    parse id ─► begin ─► claim (scope, id) ─┬─ claimed ─► run app ─► store ─► commit ─► send
                                            └─ already completed ─► replay / 422 / 410

and so are its rules: this module only carries ASGI messages in and out. What a request
means and what to answer are :mod:`chttp_server.decisions`; the message's transaction
(claim, store, commit, rollback, store errors → 503) is the synchronous core
:class:`~chttp_server.transaction.MessageTransaction`, driven from the event loop by
:class:`~chttp_server.async_transaction.AsyncMessageTransaction` through SQLAlchemy's
greenlet bridge: the same code and SQL as every other front end, and no blocking call on
the loop, on any driver.

Requests without an id, ``lifespan`` and ``websocket`` scopes pass through untouched.
The schema is checked at the first certified request (a constructor cannot await), so
the application starts while its database is down; certified requests are answered 503
until the store is back.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from chttp_core.db import configure_sqlite
from chttp_core.store_urls import CREATE_HINT, check_sqlite_file, check_store_url
from chttp_core.telemetry import NOOP, unconfigured
from chttp_core.wire import is_valid_message_id, scope_key
from chttp_server.async_transaction import AsyncMessageTransaction, run_step
from chttp_server.asgi.context import AsyncCertifiedContext, _current
from chttp_server.asgi.engines import async_url, make_async_engine, sync_journal_url
from chttp_server.asgi.incoming import (
    Message,
    Receive,
    Scope,
    Send,
    environ_for_telemetry,
    first_sent_of,
    message_id_of,
    read_body,
    replaying_receive,
    require_for_methods,
    split_path,
    user_scope,
)
from chttp_server.asgi.response import BufferedResponse, send_response
from chttp_server.decisions import (
    DEFAULT_MAX_REQUEST_BYTES,
    IncomingMessage,
    Outcome,
    incoming_message,
    message_headers,
    message_url,
    replay_headers,
    stored_answer,
)
from chttp_server.errors import (
    ConfigurationError,
    MessageIdRequired,
    MessageNotFound,
    ProtocolError,
    problem_body,
)
from chttp_server.options import check_receiver_options
from chttp_server.sessions import enter as enter_join
from chttp_server.sessions import join as join_sessions
from chttp_server.store import MessageKey, MessageStore, StoredMessage, utcnow
from chttp_server.telemetry import observe_message
from chttp_server.transaction import store_errors

__all__ = ["CertifiedMiddleware", "user_scope", "require_for_methods"]

log = logging.getLogger("chttp_server")

ASGIApp = Callable[[Scope, Receive, Send], Any]

_MARKER = "chttp.middleware"


class CertifiedMiddleware:
    """Wrap an ASGI ``app`` so that every request carrying a message id is processed
    exactly once.

    ``CertifiedMiddleware(app, engine=async_engine)`` or ``…, db_url="postgresql://…")``
    (made an async engine: asyncpg for PostgreSQL, aiosqlite for SQLite). Every option is
    keyword-only and means what it means for the WSGI middleware; a mistake raises
    :class:`ConfigurationError` here, not on the first request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        # Where messages are stored: a URL (``postgresql://…``, ``sqlite:///chttp.db``) …
        db_url: str | None = None,
        # … or the application's own AsyncEngine (then db_url must be None).
        engine: AsyncEngine | None = None,
        # How long a message is remembered (docs/protocol.rst §4).
        retention: timedelta = timedelta(days=15),
        # How long a retry waits for a concurrent request with the same id, in seconds.
        claim_timeout: float = 5.0,
        # Largest response body that can be stored; larger ones roll back with 500.
        max_response_bytes: int = 8 * 1024 * 1024,
        # Largest certified request body; larger ones are 413 request-too-large.
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        # Path prefix of the message resource of docs/protocol.rst §3.
        message_prefix: str = "/chttp/messages/",
        # The principal whose id space a request belongs to (from the ASGI scope).
        scope: Callable[[Scope], str] = user_scope,
        # A request for which this returns True must carry an id (400 without one).
        require_id: Callable[[Scope], bool] | None = None,
        # Seconds a sender is told to wait after a 503 store-unavailable.
        retry_after: int = 1,
        # Bring the schema to head (at the first certified request) instead of refusing
        # to run behind it.
        upgrade_schema: bool = False,
        # The receiver's notion of "now" (UTC); tests move it to reach expiry.
        clock: Callable[[], datetime] = utcnow,
        # Where views' own certified sends are journaled (a chttp_client.Journal); None:
        # this receiver's database on PostgreSQL (SQLite needs another file).
        journal: Any = None,
        # How long one view run waits for the answer to one of its own sends.
        handler_send_deadline: timedelta | None = timedelta(seconds=30),
        # The application's async_sessionmaker (or a list of them): their AsyncSessions
        # join each certified request's transaction (chttp_server.sessions).
        sessions: Any = (),
    ) -> None:
        if isinstance(app, CertifiedMiddleware):
            raise ConfigurationError("CertifiedMiddleware is already applied to this application")
        if not callable(app):
            raise ConfigurationError("app must be an ASGI application (a callable)")
        if (db_url is None) == (engine is None):
            raise ConfigurationError("give exactly one of db_url= or engine=")
        if engine is not None and not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                f"engine= must be an AsyncEngine (sqlalchemy.ext.asyncio.create_async_engine), "
                f"not {type(engine).__name__}: the ASGI front end never runs a blocking "
                "database call on the event loop. For a synchronous engine, serve the "
                "application through WSGI with chttp_server.CertifiedMiddleware")
        check_receiver_options(
            retention=retention, claim_timeout=claim_timeout,
            max_response_bytes=max_response_bytes, max_request_bytes=max_request_bytes,
            message_prefix=message_prefix, retry_after=retry_after,
            handler_send_deadline=handler_send_deadline)
        self.app = app
        if engine is None:
            assert db_url is not None  # exactly one of them, checked above
            url = check_store_url(db_url, create=upgrade_schema, adapt=async_url,
                                  create_hint=CREATE_HINT)
            engine = make_async_engine(url, sqlite_busy_timeout=claim_timeout)
        else:
            check_sqlite_file(engine.url, create=upgrade_schema, create_hint=CREATE_HINT)
            # A SQLite engine made elsewhere gets WAL and BEGIN IMMEDIATE for the store's
            # own transactions (chttp_core.db): without them a claim is not serialised.
            # Its pooled connections predate that: disposed (awaited) before first use.
            self._dispose_pool = engine.dialect.name == "sqlite"
            configure_sqlite(engine.sync_engine, dispose=False)
        self.engine = engine
        if db_url is not None:
            self._dispose_pool = False
        self.store = MessageStore(engine.sync_engine, retention=retention,
                                  claim_timeout=claim_timeout, clock=clock)
        self.max_response_bytes = max_response_bytes
        self.max_request_bytes = max_request_bytes
        self.message_prefix = message_prefix
        self.scope = scope
        self.require_id = require_id
        self.retry_after = retry_after
        self.handler_send_deadline = handler_send_deadline
        self._journal = journal
        self._upgrade_schema = upgrade_schema
        self._schema_ready = False
        self._schema_lock: asyncio.Lock | None = None
        factories = sessions if isinstance(sessions, (list, tuple)) else [sessions]
        for factory in factories:
            join_sessions(factory, store=engine.sync_engine)
        self.joins_sessions = bool(factories)

    # -- schema and journal ----------------------------------------------------------

    async def prepare(self) -> None:
        """Check (or, with ``upgrade_schema``, upgrade) the store's schema now.

        Optional: the first certified request does it anyway. Call it from a lifespan
        handler to fail at start-up on a schema behind the code. Raises
        :class:`~chttp_core.errors.SchemaOutOfDateError` for a schema behind the code
        and :class:`~chttp_core.errors.StoreUnreachable` for a store that is down.
        """
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            if self._dispose_pool:
                await self.engine.dispose()
                self._dispose_pool = False
            if not self._schema_ready:
                await run_step(self.store.prepare_schema, upgrade=self._upgrade_schema)
                self._schema_ready = True

    def journal(self) -> Any:
        """The journal of views' certified sends (made on first use; blocking: call it
        from a worker thread, as :class:`AsyncCertifiedContext` does)."""
        if self._journal is None:
            from chttp_client.journal import Journal

            url = sync_journal_url(self.engine)
            if url is None:
                from chttp_client.errors import ChttpClientError

                raise ChttpClientError(
                    "a view's certified sends need a journal outside the SQLite message store "
                    "(its file is locked by the view's transaction): pass "
                    "CertifiedMiddleware(..., journal=Journal('sqlite:///outgoing.db'))")
            self._journal = Journal(url, upgrade_schema=False)
        return self._journal

    # -- ASGI ------------------------------------------------------------------------

    def scope_of(self, scope: Scope) -> str:
        """The stored scope of this request (:func:`chttp_core.wire.scope_key`)."""
        return scope_key(self.scope(scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan, websocket: untouched
            return
        marker = scope.get(_MARKER)
        if marker is not None and marker is not self:
            raise ConfigurationError("CertifiedMiddleware is stacked twice on one request path")
        scope[_MARKER] = self
        root_path, path = split_path(scope)
        answered = _AnswerTracker(send)
        try:
            if path.startswith(self.message_prefix):
                await self._message_resource(scope, answered.send, root_path, path)
                return
            message_id = message_id_of(scope)
            if message_id is None:
                if self.require_id is not None and self.require_id(scope):
                    raise MessageIdRequired("this request must carry X-Message-ID or Idempotency-Key")
                await self.app(scope, receive, send)
                return
            # The trace headers are looked up only when there is telemetry to read them.
            observed = NOOP if unconfigured() else observe_message(
                environ_for_telemetry(scope), message_id)
            with observed:
                await self._certified(scope, receive, answered.send, message_id, root_path, observed)
        except ProtocolError as error:
            if answered.started:
                raise
            status, headers, body = error.problem()
            await send_response(send, status, headers, body)

    async def _certified(self, scope: Scope, receive: Receive, send: Send, message_id: str,
                         root_path: str, observed: Any = NOOP) -> None:
        body = await read_body(scope, receive, self.max_request_bytes)
        message = self.incoming(scope, body, message_id)
        if not self._schema_ready:
            with store_errors(retry_after=self.retry_after, message_id=message_id):
                await self.prepare()
        txn = AsyncMessageTransaction(self.store, message.key, async_engine=self.engine,
                                      retry_after=self.retry_after, observation=observed)
        async with txn:
            stored = await txn.begin_and_claim(message)
            if stored is not None:
                await self._replay(scope, send, root_path, stored)
                return
            await self._run_in(txn, scope, replaying_receive(body, receive), send, message,
                               root_path)

    def incoming(self, scope: Scope, body: bytes, message_id: str) -> IncomingMessage:
        """The certified message of this request, whose body was read (§1)."""
        first_sent = first_sent_of(scope)
        root_path, path = split_path(scope)
        return incoming_message(
            str(scope.get("method", "GET")),
            root_path + path,
            bytes(scope.get("query_string", b"")).decode("latin-1"),
            body,
            message_id=message_id,
            scope=self.scope_of(scope),
            first_sent=first_sent,
        )

    async def _run_in(self, txn: AsyncMessageTransaction, scope: Scope, receive: Receive,
                      send: Send, message: IncomingMessage, root_path: str) -> None:
        """Run the application inside ``txn``; store (or roll back) and send its response
        when its last chunk arrives."""
        context = AsyncCertifiedContext(
            message_id=message.message_id,
            scope=message.scope,
            fingerprint=message.fingerprint,
            connection=txn.connection,
            received_at=txn.received_at or self.store.clock(),
            expires_at=txn.expires_at,
            asgi_scope=scope,
            journal=self.journal,
            handler_send_deadline=self.handler_send_deadline,
        )
        join = enter_join(txn.sync.connection) if self.joins_sessions else None
        ended = False

        def end_handler(core: Any) -> None:
            """The view's part is over (synchronous, in the executor): its sessions stop
            joining and close (a savepoint it never committed rolls back), the context's
            session flushes into the transaction."""
            nonlocal ended
            ended = True
            with core.handler_errors():
                if join is not None:
                    join.end()
                    join.close_sessions()
                context.flush_and_close_session()

        def store(core: Any, response: BufferedResponse) -> None:
            end_handler(core)
            core.complete(response.status, response.headers, response.body,
                          too_large=response.too_large, limit=self.max_response_bytes)
            core.close()  # the connection goes back before background tasks run

        async def store_and_send(response: BufferedResponse) -> None:
            try:
                await txn.run(lambda core: store(core, response))
            finally:
                await context.close()
            headers = response.headers
            if txn.outcome is Outcome.STORE:
                url = message_url(root_path, self.message_prefix, message.message_id)
                headers = headers + message_headers(url, txn.expires_at)
            await send_response(send, response.status, headers, response.body)

        response = BufferedResponse(self.max_response_bytes, store_and_send)
        token = _current.set(context)
        try:
            with txn.handler_errors():
                await self.app(scope, receive, response.send)
        except BaseException:
            if response.failure is not None:
                raise response.failure from None
            raise
        finally:
            _current.reset(token)
            if join is not None:
                join.leave()
            if not ended:
                await _quietly(lambda: txn.run(end_handler))
                await _quietly(context.close)
        if response.failure is not None:
            raise response.failure  # the application swallowed it: answer it all the same
        if not response.complete:
            raise RuntimeError("the application returned without completing its response")

    async def _replay(self, scope: Scope, send: Send, root_path: str, message: StoredMessage) -> None:
        """Answer from the store: the stored response, byte for byte (§2, §3)."""
        if message.status is None or message.body is None:
            raise RuntimeError(f"message {message.key.message_id!r} has no stored response")
        url = message_url(root_path, self.message_prefix, message.key.message_id)
        await send_response(send, message.status, replay_headers(message, url), message.body,
                            head=str(scope.get("method", "GET")).upper() == "HEAD")

    # -- the message resource (§3) ----------------------------------------------------

    async def _message_resource(self, scope: Scope, send: Send, root_path: str, path: str) -> None:
        # ASGI's path is already percent-decoded: decoding again would let
        # "/chttp/messages/a%253Ab" name message "a:b".
        message_id = path[len(self.message_prefix):]
        method = str(scope.get("method", "GET")).upper()
        if method not in ("GET", "HEAD", "DELETE"):
            await send_response(send, 405, [
                ("Content-Type", "application/problem+json"), ("Allow", "GET, HEAD, DELETE"),
            ], problem_body(405, "method-not-allowed", "Method not allowed"))
            return
        if not is_valid_message_id(message_id):
            raise MessageNotFound(message_id=None)
        if not self._schema_ready:
            with store_errors(retry_after=self.retry_after, message_id=message_id):
                await self.prepare()
        key = MessageKey(self.scope_of(scope), message_id)
        txn = AsyncMessageTransaction(self.store, key, async_engine=self.engine,
                                      retry_after=self.retry_after)
        async with txn:
            message = await (txn.acknowledge() if method == "DELETE" else txn.fetch())
        if message is None:
            raise MessageNotFound(message_id=message_id)
        if method == "DELETE":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self._replay(scope, send, root_path,
                           stored_answer(message, None, self.store.clock()))


class _AnswerTracker:
    """Wraps ``send`` to know whether a response has begun (then no problem can follow)."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _quietly(step: Callable[[], Any]) -> None:
    """Run a clean-up step after a failure, keeping the failure: its own error is logged."""
    try:
        await step()
    except Exception:  # noqa: BLE001 - the original failure is the one to report
        log.debug("chttp: clean-up after a failed certified request failed", exc_info=True)
