"""``CertifiedMiddleware``: exactly-once processing for any WSGI application.

The flow of one certified request (docs/protocol.rst §2)::

    parse id ─► begin transaction ─► claim (scope, id) ─┬─ claimed ─► run app ─► store ─► commit ─► send
                                                        └─ already completed ─► replay / 422 / 410

Requests without an id pass through untouched. Requests under the message prefix are
the message resource of §3 (GET replays, DELETE acknowledges). Nothing is kept in process
memory between requests: any number of workers and hosts can share one database.

This module only carries WSGI in and out: what a request means and what to answer are
decided by :mod:`chttp_server.decisions`, and the message's transaction (claim, store,
commit, rollback, and the one translation of store errors into 503) is
:class:`~chttp_server.transaction.MessageTransaction`. Other front ends (Flask, Django)
reuse both.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from sqlalchemy import Engine

from chttp_core.db import configure_sqlite, make_engine, normalize_url
from chttp_core.errors import StoreUnreachable
from chttp_core.store_urls import CREATE_HINT, check_sqlite_file, check_store_url
from chttp_core.telemetry import NOOP
from chttp_core.wire import is_valid_message_id, scope_key
from chttp_server.context import ENVIRON_KEY, CertifiedContext
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
    problem_response,
)
from chttp_server.incoming import first_sent_of, message_id_of, read_body
from chttp_server.options import check_receiver_options
from chttp_server.sessions import join as join_sessions
from chttp_server.sessions import joined
from chttp_server.store import MessageKey, MessageStore, StoredMessage, utcnow
from chttp_server.telemetry import observe_message
from chttp_server.transaction import MessageTransaction, store_errors

__all__ = ["CertifiedMiddleware", "remote_user_scope", "require_for_methods"]

log = logging.getLogger("chttp_server")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Headers = list[tuple[str, str]]

_MARKER = "chttp.middleware"
_SCRIPT_NAME_KEY = "chttp.script_name"


def remote_user_scope(environ: dict[str, Any]) -> str:
    """The default scope: the authenticated principal, ``""`` when anonymous (docs/protocol.rst §1)."""
    return environ.get("REMOTE_USER") or ""


def require_for_methods(*methods: str) -> Callable[[dict[str, Any]], bool]:
    """A ``require_id`` policy: these methods must carry a message id (else 400)."""
    wanted = frozenset(method.upper() for method in methods)
    return lambda environ: environ.get("REQUEST_METHOD", "GET").upper() in wanted


class _BufferedResponse:
    """What the wrapped application answered, collected whole before anything is sent."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = ""
        self.headers: Headers = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False

    def start_response(self, status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and self.status:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status = status
        self.headers = [(str(name), str(value)) for name, value in headers]
        return self.write

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.too_large = True
        elif chunk:
            self.chunks.append(bytes(chunk))

    @property
    def status_code(self) -> int:
        return int(self.status.split(" ", 1)[0])

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class CertifiedMiddleware:
    """Wrap ``app`` so that every request carrying a message id is processed exactly once.

    ``CertifiedMiddleware(app, db_url="postgresql://…")`` or ``…, engine=my_engine)``.
    Every option is keyword-only; a mistake raises :class:`ConfigurationError` here,
    not on the first request.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        # Where messages are stored: a URL (``postgresql://…``, ``sqlite:///chttp.db``) …
        db_url: str | None = None,
        # … or an engine the host application already has (then db_url must be None).
        engine: Engine | None = None,
        # How long a message is remembered (docs/protocol.rst §4; 15 days in the original design).
        retention: timedelta = timedelta(days=15),
        # How long a retry waits for a concurrent request with the same id, in seconds.
        claim_timeout: float = 5.0,
        # Largest response body that can be stored; larger ones roll back with 500.
        max_response_bytes: int = 8 * 1024 * 1024,
        # Largest certified request body; larger ones are 413 request-too-large, unread
        # (docs/protocol.rst §4: the fingerprint needs the whole body in memory).
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        # Path prefix of the message resource of docs/protocol.rst §3.
        message_prefix: str = "/chttp/messages/",
        # The principal whose id space a request belongs to.
        scope: Callable[[dict[str, Any]], str] = remote_user_scope,
        # A request for which this returns True must carry an id (400 without one).
        require_id: Callable[[dict[str, Any]], bool] | None = None,
        # Seconds a sender is told to wait after a 503 store-unavailable.
        retry_after: int = 1,
        # Bring the schema to head at start-up instead of refusing to run behind it.
        upgrade_schema: bool = False,
        # The receiver's notion of "now" (UTC); tests move it to reach expiry.
        clock: Callable[[], datetime] = utcnow,
        # Where handlers' own certified sends are journaled (a chttp_client.Journal);
        # None: this receiver's database on PostgreSQL (SQLite needs another file).
        journal: Any = None,
        # How long one handler run waits for the answer to one of its own sends before
        # the send raises DeadlineExceeded (unrecorded; the incoming retry resends it);
        # short, because the handler's transaction stays open meanwhile. None: no bound
        # but the journal's send deadline (chttp_client.incoming, "Deadlines").
        handler_send_deadline: timedelta | None = timedelta(seconds=30),
        # The application's own sessionmaker / scoped_session (or a list of them): their
        # sessions join each certified request's transaction (chttp_server.sessions).
        sessions: Any = (),
        # PostgreSQL + psycopg2: in the store's own transactions the claim and the stored
        # response are prepared statements, prepared together on demand by each server
        # session that lacks them (safe behind PgBouncer). True: both are prepared once
        # per pooled connection, in every transaction (an isolation level set too), which
        # a transaction-mode pooler (PgBouncer) breaks. Direct connections only.
        prepared_statements: bool = False,
    ) -> None:
        if isinstance(app, CertifiedMiddleware):
            raise ConfigurationError("CertifiedMiddleware is already applied to this application")
        if not callable(app):
            raise ConfigurationError("app must be a WSGI application (a callable)")
        if (db_url is None) == (engine is None):
            raise ConfigurationError("give exactly one of db_url= or engine=")
        check_receiver_options(
            retention=retention, claim_timeout=claim_timeout,
            max_response_bytes=max_response_bytes, max_request_bytes=max_request_bytes,
            message_prefix=message_prefix, retry_after=retry_after,
            handler_send_deadline=handler_send_deadline)
        self.app = app
        if engine is None:
            assert db_url is not None  # exactly one of them, checked above
            # No pre-ping: the claim, a transaction's first statement, is retried once on
            # a fresh connection instead (MessageTransaction.claim): a round trip saved
            # on every request.
            # A typo in the URL is refused here, and a missing SQLite file is created
            # only when asked to (upgrade_schema): chttp_core.store_urls.
            url = check_store_url(db_url, create=upgrade_schema, adapt=normalize_url,
                                  create_hint=CREATE_HINT)
            engine = make_engine(url, sqlite_busy_timeout=claim_timeout, pool_pre_ping=False)
        else:
            check_sqlite_file(engine.url, create=upgrade_schema, create_hint=CREATE_HINT)
            # A SQLite engine made elsewhere gets WAL and BEGIN IMMEDIATE (chttp_core.db):
            # without them a claim is not serialised and savepoints do not work.
            configure_sqlite(engine)
        self.engine = engine
        self.store = MessageStore(
            self.engine, retention=retention, claim_timeout=claim_timeout, clock=clock,
            prepared_statements=prepared_statements,
        )
        self.max_response_bytes = max_response_bytes
        self.max_request_bytes = max_request_bytes
        self.message_prefix = message_prefix
        self.scope = scope
        self.require_id = require_id
        self.journal = journal
        self.handler_send_deadline = handler_send_deadline
        self.retry_after = retry_after
        self._upgrade_schema = upgrade_schema
        factories = sessions if isinstance(sessions, (list, tuple)) else [sessions]
        for factory in factories:
            join_sessions(factory, store=self.engine)
        self.joins_sessions = bool(factories)
        self._prepare_schema(at_start=True)

    # -- schema ----------------------------------------------------------------------

    def _prepare_schema(self, *, at_start: bool) -> None:
        """Check (or upgrade) the schema; a store that is down is checked again later.

        docs/protocol.rst §4: a receiver whose store is down still starts, and answers
        503 until the store returns. A schema behind the code is a deployment mistake
        and raises at once, naming the command that fixes it.
        """
        if at_start:
            try:
                self.store.ensure_schema(upgrade=self._upgrade_schema)
            except StoreUnreachable as exc:
                log.warning("chttp message store unreachable, will answer 503 until it is "
                            "(and %s the schema then): %s",
                            "upgrade" if self._upgrade_schema else "check", exc.reason)
        else:
            with store_errors(retry_after=self.retry_after):
                self.store.ensure_schema(upgrade=self._upgrade_schema)

    def transaction(self, key: MessageKey, *, observation: Any = NOOP) -> MessageTransaction:
        """A message transaction of its own for ``key`` (schema checked first if needed);
        ``observation``: the request's :func:`~chttp_server.telemetry.observe_message`."""
        if not self.store.schema_ready:
            self._prepare_schema(at_start=False)
        return MessageTransaction(self.store, key, retry_after=self.retry_after,
                                  observation=observation)

    # -- WSGI ------------------------------------------------------------------------

    def scope_of(self, environ: dict[str, Any]) -> str:
        """The stored scope of this request: the configured principal, made to fit the
        store the same way on every database (:func:`chttp_core.wire.scope_key`, docs/protocol.rst §4)."""
        return scope_key(self.scope(environ))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get(_MARKER) is not None and environ[_MARKER] is not self:
            raise ConfigurationError("CertifiedMiddleware is stacked twice on one request path")
        environ[_MARKER] = self
        environ[_SCRIPT_NAME_KEY] = environ.get("SCRIPT_NAME", "")
        try:
            path = environ.get("PATH_INFO", "")
            if path.startswith(self.message_prefix):
                return self._message_resource(environ, start_response, path)
            message_id = message_id_of(environ)
            if message_id is None:
                if self.require_id is not None and self.require_id(environ):
                    raise MessageIdRequired("this request must carry X-Message-ID or Idempotency-Key")
                return self.app(environ, start_response)
            with observe_message(environ, message_id) as observed:  # metrics, spans: if on
                return self._certified(environ, start_response, message_id, observed)
        except ProtocolError as error:
            return error(environ, start_response)

    def incoming(self, environ: dict[str, Any], message_id: str) -> IncomingMessage:
        """The certified message of this request (reads the body, capped; §1, §4)."""
        first_sent = first_sent_of(environ)
        body = read_body(environ, self.max_request_bytes)
        return incoming_message(
            environ.get("REQUEST_METHOD", "GET"),
            environ[_SCRIPT_NAME_KEY] + environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""),
            body,
            message_id=message_id,
            scope=self.scope_of(environ),
            first_sent=first_sent,
        )

    def _certified(
        self, environ: dict[str, Any], start_response: Callable[..., Any], message_id: str,
        observed: Any = NOOP,
    ) -> Iterable[bytes]:
        message = self.incoming(environ, message_id)
        with self.transaction(message.key, observation=observed) as txn:
            stored = txn.claim(message)
            if stored is not None:
                return self._replay(environ, start_response, stored)
            response = self._run_in(txn, environ, message)
        if txn.outcome is not Outcome.STORE:  # a 5xx / 429, rolled back: the key stays free
            start_response(response.status, response.headers)
            return [response.body]
        url = self._message_url(environ, message.message_id)
        start_response(response.status, response.headers + message_headers(url, txn.expires_at))
        return [response.body]

    def _run_in(
        self, txn: MessageTransaction, environ: dict[str, Any], message: IncomingMessage
    ) -> _BufferedResponse:
        """Run the application inside ``txn`` and store (or roll back) its response."""
        context = CertifiedContext(
            message_id=message.message_id,
            scope=message.scope,
            fingerprint=message.fingerprint,
            connection=txn.connection,
            received_at=txn.received_at or self.store.clock(),
            expires_at=txn.expires_at,
            environ=environ,
            journal=self.journal,
            handler_send_deadline=self.handler_send_deadline,
        )
        environ[ENVIRON_KEY] = context
        try:
            with txn.handler_errors():
                if self.joins_sessions:
                    with joined(txn.connection):
                        response = self._run_app(environ)
                else:
                    response = self._run_app(environ)
                context.flush()
            txn.complete(response.status_code, response.headers, response.body,
                         too_large=response.too_large, limit=self.max_response_bytes)
        finally:
            context.close()
        return response

    def _run_app(self, environ: dict[str, Any]) -> _BufferedResponse:
        response = _BufferedResponse(self.max_response_bytes)
        app_iter = self.app(environ, response.start_response)
        try:
            for chunk in app_iter:
                response.write(chunk)
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
        if not response.status:
            raise RuntimeError("the application returned without calling start_response")
        return response

    def _replay(
        self, environ: dict[str, Any], start_response: Callable[..., Any], message: StoredMessage
    ) -> Iterable[bytes]:
        """Answer from the store: the stored response, byte for byte (§2, §3)."""
        assert message.status is not None and message.body is not None
        url = self._message_url(environ, message.key.message_id)
        start_response(_status_line(message.status), replay_headers(message, url))
        if environ.get("REQUEST_METHOD", "GET").upper() == "HEAD":
            return []  # RFC 9110 §9.3.2: the headers of GET, no content
        return [message.body]

    def _message_url(self, environ: dict[str, Any], message_id: str) -> str:
        # The application may have moved path segments into SCRIPT_NAME (traversal).
        script_name = environ.get(_SCRIPT_NAME_KEY, environ.get("SCRIPT_NAME", ""))
        return message_url(script_name, self.message_prefix, message_id)

    # -- the message resource (§3) ----------------------------------------------------

    def _message_resource(
        self, environ: dict[str, Any], start_response: Callable[..., Any], path: str
    ) -> Iterable[bytes]:
        # PATH_INFO is already percent-decoded (PEP 3333); decoding again would let
        # "/chttp/messages/a%253Ab" name message "a:b".
        message_id = path[len(self.message_prefix):]
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method not in ("GET", "HEAD", "DELETE"):
            response = problem_response(405, "method-not-allowed", "Method not allowed",
                                        headers=[("Allow", "GET, HEAD, DELETE")])
            body: Iterable[bytes] = response(environ, start_response)
            return body
        if not is_valid_message_id(message_id):
            raise MessageNotFound(message_id=None)
        with self.transaction(MessageKey(self.scope_of(environ), message_id)) as txn:
            message = txn.acknowledge() if method == "DELETE" else txn.fetch()
        if message is None:
            raise MessageNotFound(message_id=message_id)
        if method == "DELETE":
            start_response("204 No Content", [])
            return []
        return self._replay(environ, start_response, stored_answer(message, None, self.store.clock()))


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"
