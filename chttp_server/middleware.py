"""``CertifiedMiddleware``: exactly-once processing for any WSGI application.

The flow of one certified request (PROTOCOL.md §2)::

    parse id ─► begin transaction ─► claim (scope, id) ─┬─ claimed ─► run app ─► store ─► commit ─► send
                                                        └─ already completed ─► replay / 422 / 410

Requests without an id pass through untouched. Requests under the message prefix are
the message resource of §3 (GET replays, DELETE acknowledges). Nothing is kept in process
memory between requests: any number of workers and hosts can share one database.
"""

from __future__ import annotations

import logging
import sys
from http import HTTPStatus
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from chttp_core.db import make_engine
from chttp_core.wire import (
    HEADER_MESSAGE_EXPIRES,
    HEADER_MESSAGE_URL,
    HEADER_REPLAYED,
    fingerprint,
    format_http_date,
    is_valid_message_id,
)
from chttp_core import migrate
from chttp_server.context import ENVIRON_KEY, CertifiedContext
from chttp_server.errors import (
    ConfigurationError,
    MessageAcknowledged,
    MessageExpired,
    MessageIdRequired,
    MessageIdReused,
    MessageNotFound,
    MessageTooOld,
    ProtocolError,
    ResponseTooLarge,
    SchemaOutOfDateError,
    StoreUnavailable,
    problem_response,
)
from chttp_server.incoming import first_sent_of, message_id_of, read_body
from chttp_core.db import is_disconnect
from chttp_server.store import MessageKey, MessageStore, StoredMessage, utcnow

__all__ = ["CertifiedMiddleware", "remote_user_scope", "require_for_methods"]

log = logging.getLogger("chttp_server")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Headers = list[tuple[str, str]]

_MARKER = "chttp.middleware"
_SCRIPT_NAME_KEY = "chttp.script_name"


def remote_user_scope(environ: dict[str, Any]) -> str:
    """The default scope: the authenticated principal, ``""`` when anonymous (PROTOCOL.md §1)."""
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
        # How long a message is remembered (PROTOCOL.md §4; 15 days in the original design).
        retention: timedelta = timedelta(days=15),
        # How long a retry waits for a concurrent request with the same id, in seconds.
        claim_timeout: float = 5.0,
        # Largest response body that can be stored; larger ones roll back with 500.
        max_response_bytes: int = 8 * 1024 * 1024,
        # Path prefix of the message resource of PROTOCOL.md §3.
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
    ) -> None:
        if isinstance(app, CertifiedMiddleware):
            raise ConfigurationError("CertifiedMiddleware is already applied to this application")
        if not callable(app):
            raise ConfigurationError("app must be a WSGI application (a callable)")
        if (db_url is None) == (engine is None):
            raise ConfigurationError("give exactly one of db_url= or engine=")
        if retention <= timedelta(0):
            raise ConfigurationError("retention must be positive")
        if claim_timeout <= 0:
            raise ConfigurationError("claim_timeout must be positive")
        if max_response_bytes < 0:
            raise ConfigurationError("max_response_bytes must not be negative")
        if not (message_prefix.startswith("/") and message_prefix.endswith("/")):
            raise ConfigurationError("message_prefix must start and end with '/'")
        if retry_after < 0:
            raise ConfigurationError("retry_after must not be negative")
        if handler_send_deadline is not None and handler_send_deadline <= timedelta(0):
            raise ConfigurationError("handler_send_deadline must be positive (or None)")
        self.app = app
        if engine is None:
            assert db_url is not None  # exactly one of them, checked above
            engine = make_engine(db_url, sqlite_busy_timeout=claim_timeout)
        self.engine = engine
        self.store = MessageStore(
            self.engine, retention=retention, claim_timeout=claim_timeout, clock=clock
        )
        self.max_response_bytes = max_response_bytes
        self.message_prefix = message_prefix
        self.scope = scope
        self.require_id = require_id
        self.journal = journal
        self.handler_send_deadline = handler_send_deadline
        self.retry_after = retry_after
        self._upgrade_schema = upgrade_schema
        self._schema_ready = False
        self._prepare_schema(at_start=True)

    # -- schema ----------------------------------------------------------------------

    def _prepare_schema(self, *, at_start: bool) -> None:
        """Check (or upgrade) the schema; a store that is down is checked again later.

        PROTOCOL.md §4: a receiver whose store is down still starts, and answers 503
        until the store returns. A schema behind the code is a deployment mistake and
        raises at once, naming the command that fixes it.
        """
        try:
            if self._upgrade_schema:
                migrate.upgrade(self.engine)
            else:
                migrate.check_schema(self.engine)
        except SchemaOutOfDateError:
            if at_start:
                raise
            raise StoreUnavailable(
                f"the chttp schema is behind this code; run `{migrate.UPGRADE_COMMAND}`",
                retry_after=self.retry_after,
            ) from None
        except (sa_exc.DBAPIError, sa_exc.DisconnectionError, sa_exc.TimeoutError) as exc:
            if not is_disconnect(exc):
                raise
            log.warning("chttp message store unreachable, will answer 503 until it is: %s", exc)
            if not at_start:
                raise StoreUnavailable(retry_after=self.retry_after) from exc
            return
        self._schema_ready = True

    # -- WSGI ------------------------------------------------------------------------

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
            return self._certified(environ, start_response, message_id)
        except ProtocolError as error:
            return error(environ, start_response)

    def _certified(
        self, environ: dict[str, Any], start_response: Callable[..., Any], message_id: str
    ) -> Iterable[bytes]:
        first_sent = first_sent_of(environ)
        key = MessageKey(self.scope(environ), message_id)
        body = read_body(environ)
        digest = fingerprint(
            environ.get("REQUEST_METHOD", "GET"),
            environ[_SCRIPT_NAME_KEY] + environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""),
            body,
        )
        connection = self._begin()
        try:
            now = self.store.clock()
            existing = self._claim(connection, key, digest, now)
            if existing is not None:
                connection.rollback()
                return self._answer_existing(environ, start_response, existing, digest)
            if first_sent is not None and first_sent < now - self.store.retention:
                raise MessageTooOld(
                    "this receiver keeps messages for "
                    f"{self.store.retention}; a message first sent at "
                    f"{format_http_date(first_sent)} may already have been processed and "
                    "forgotten",
                    message_id=message_id,
                )
            return self._run_and_store(environ, start_response, connection, key, digest, now)
        except BaseException:
            _rollback_quietly(connection)
            raise
        finally:
            connection.close()

    def _begin(self) -> Connection:
        if not self._schema_ready:
            self._prepare_schema(at_start=False)
        try:
            return self.store.begin()
        except StoreUnavailable as error:
            error.retry_after = self.retry_after
            raise

    def _claim(
        self, connection: Connection, key: MessageKey, digest: str, now: datetime
    ) -> StoredMessage | None:
        with self._store_errors(key):
            return self.store.claim(connection, key, digest, now)

    @contextmanager
    def _store_errors(self, key: MessageKey) -> Iterator[None]:
        """Turn a lost store connection into 503 ``store-unavailable``."""
        try:
            yield
        except sa_exc.DBAPIError as exc:
            if is_disconnect(exc):
                raise StoreUnavailable(retry_after=self.retry_after, message_id=key.message_id) from exc
            raise

    def _run_and_store(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        connection: Connection,
        key: MessageKey,
        digest: str,
        received_at: datetime,
    ) -> Iterable[bytes]:
        context = CertifiedContext(
            message_id=key.message_id,
            scope=key.scope,
            fingerprint=digest,
            connection=connection,
            received_at=received_at,
            expires_at=received_at + self.store.retention,
            environ=environ,
            journal=self.journal,
            handler_send_deadline=self.handler_send_deadline,
        )
        environ[ENVIRON_KEY] = context
        try:
            try:
                response = self._run_app(environ)
                context.flush()
            except sa_exc.DBAPIError as exc:
                if exc.connection_invalidated:
                    raise StoreUnavailable(
                        retry_after=self.retry_after, message_id=key.message_id
                    ) from exc
                # The application's own statement failed (a missing table, a deadlock):
                # its error, rolled back by the caller; not "the store is unreachable".
                raise
            with self._store_errors(key):
                if _means_try_again(response.status_code):
                    # "Stored iff committed": a 5xx (or 429) leaves the key free for a
                    # fresh retry.
                    connection.rollback()
                    start_response(response.status, response.headers)
                    return [response.body]
                if response.too_large:
                    raise ResponseTooLarge(
                        f"the response body exceeds {self.max_response_bytes} bytes",
                        message_id=key.message_id,
                    )
                self.store.complete(
                    connection, key, response.status_code, response.headers, response.body
                )
                connection.commit()
        finally:
            context.close()
        expires_at = received_at + self.store.retention
        start_response(response.status, response.headers + self._message_headers(environ, key, expires_at))
        return [response.body]

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

    def _answer_existing(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        message: StoredMessage,
        digest: str,
    ) -> Iterable[bytes]:
        if message.fingerprint != digest:
            raise MessageIdReused(
                "this id was already used for a request with a different method, path, "
                "query or body",
                message_id=message.key.message_id,
            )
        return self._replay(environ, start_response, message)

    def _replay(
        self, environ: dict[str, Any], start_response: Callable[..., Any], message: StoredMessage
    ) -> Iterable[bytes]:
        """Answer from the store: the stored response, or 410 if it is gone (§3)."""
        if message.acknowledged:
            raise MessageAcknowledged(message_id=message.key.message_id)
        if message.expired(self.store.clock()):
            raise MessageExpired(message_id=message.key.message_id)
        assert message.status is not None and message.headers is not None and message.body is not None
        headers = list(message.headers)
        headers += self._message_headers(environ, message.key, message.expires_at)
        headers.append((HEADER_REPLAYED, "true"))
        start_response(_status_line(message.status), headers)
        if environ.get("REQUEST_METHOD", "GET").upper() == "HEAD":
            return []  # RFC 9110 §9.3.2: the headers of GET, no content
        return [message.body]

    def _message_headers(self, environ: dict[str, Any], key: MessageKey, expires_at: Any) -> Headers:
        # The application may have moved path segments into SCRIPT_NAME (traversal).
        script_name = environ.get(_SCRIPT_NAME_KEY, environ.get("SCRIPT_NAME", ""))
        url = script_name + self.message_prefix + quote(key.message_id, safe="")
        return [(HEADER_MESSAGE_URL, url), (HEADER_MESSAGE_EXPIRES, format_http_date(expires_at))]

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
            return response(environ, start_response)
        if not is_valid_message_id(message_id):
            raise MessageNotFound(message_id=None)
        key = MessageKey(self.scope(environ), message_id)
        connection = self._begin()
        try:
            if method == "DELETE":
                message = self.store.acknowledge(connection, key)
                connection.commit()
            else:
                message = self.store.lookup(connection, key)
                connection.rollback()
        except sa_exc.DBAPIError as exc:
            _rollback_quietly(connection)
            if is_disconnect(exc):
                raise StoreUnavailable(retry_after=self.retry_after) from exc
            raise
        finally:
            connection.close()
        if message is None:
            raise MessageNotFound(message_id=message_id)
        if method == "DELETE":
            start_response("204 No Content", [])
            return []
        return self._replay(environ, start_response, message)


def _means_try_again(status: int) -> bool:
    """True for answers that tell the sender to come back later, which are never stored.

    A 5xx is PROTOCOL.md §2's rule. 429 (RFC 6585 §4) is a 4xx but says "not now", and
    the sender retries it (§5): stored, it would be replayed to every retry until the
    sender's deadline, so it rolls back like a 5xx.
    """
    return status >= 500 or status == 429


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _rollback_quietly(connection: Connection) -> None:
    try:
        if connection.in_transaction():
            connection.rollback()
    except sa_exc.SQLAlchemyError:
        log.debug("rollback failed on a broken connection", exc_info=sys.exc_info())
