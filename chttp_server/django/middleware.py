"""``CertifiedMiddleware`` for Django: exactly-once views over Django's own ORM connection.

A request carrying ``X-Message-ID`` / ``Idempotency-Key`` runs as (docs/protocol.rst §2)::

    transaction.atomic(using=alias):            # Django's connection, Django's transaction
        claim (scope, id) ─┬─ claimed ─► view (ORM writes) ─► store the response ─► commit
                           └─ completed ─► rolled back; replay / 422 / 410

The claim and the stored response are executed on the very DB-API connection the ORM
uses (:mod:`chttp_server.django.connection`), inside one ``atomic`` block the middleware
opens, so the view's writes commit with the stored response or not at all: a view that
raises (Django turns it into a 500), a 5xx or a 429 rolls everything back and leaves the
id free for a retry, and a crash before the commit leaves nothing behind. No
``ATOMIC_REQUESTS`` is needed; a view's own ``atomic()`` blocks become savepoints and
``transaction.on_commit`` hooks run once the message is stored.

The protocol's rules are not here: :mod:`chttp_server.decisions` decides and
:class:`~chttp_server.transaction.MessageTransaction` carries the message, in joined
mode (its rollback is ``transaction.set_rollback(True)``; its commit is leaving
``atomic``). Requests without an id pass through untouched, with ``request.chttp`` set
to ``None``. When this middleware itself runs inside a transaction (Django's
``TestCase``), the message is a savepoint and is durable when that transaction commits.
Otherwise, on psycopg 3, ``BEGIN`` travels with the claim and ``COMMIT`` with the stored
response (or a replay's hold): a one-insert view costs three round trips, a replay two
(:func:`chttp_server.fused_transaction.lend`, :mod:`chttp_server.store_dbapi`); a view
that ends the transaction itself has its later statements refused, unsent.

SQLite: the claim is the first statement of the message's transaction and a write, so
it takes the database's write lock at once (waiting up to Django's ``timeout`` option)
and every certified request is serialised like PostgreSQL's row lock serialises one id.
Acknowledging (``DELETE`` of the message URL) reads before it writes; under concurrent
writers Django's ``"OPTIONS": {"transaction_mode": "IMMEDIATE"}`` (Django 5.1) spares it
an early "database is locked", which is answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterator

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.wsgi import get_script_name
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponseBase

from chttp_core import migrate
from chttp_core.errors import SchemaOutOfDateError, StoreUnreachable
from chttp_core.telemetry import NOOP
from chttp_core.wire import is_valid_message_id, scope_key
from chttp_server.context import CertifiedContext
from chttp_server.decisions import (
    IncomingMessage,
    Outcome,
    incoming_message,
    means_try_again,
    message_headers,
    message_url,
    replay_headers,
    stored_answer,
)
from chttp_server.django import responses
from chttp_server.django.checks import (
    UPLOAD_LIMIT_WARNING,
    check_configuration,
    request_body_limit,
    upload_limit_problem,
)
from chttp_server.django.conf import SETTING_NAME, read_settings
from chttp_server.django.connection import (
    django_engine,
    django_errors,
    initialize,
    lost_connection,
)
from chttp_server.django.journal import journal_for
from chttp_server.django.threads import install, message_thread
from chttp_server.errors import (
    ConfigurationError,
    MessageIdRequired,
    MessageNotFound,
    ProtocolError,
    RequestTooLarge,
    StoreUnavailable,
)
from chttp_server.incoming import first_sent_of, message_id_of, read_body
from chttp_server.store import (
    MessageKey,
    MessageStore,
    StoredMessage,
    unreachable_as_store_error,
)
from chttp_server.telemetry import observe_message
from chttp_server.transaction import MessageTransaction, store_errors

__all__ = ["CertifiedMiddleware", "MIGRATE_COMMAND"]

log = logging.getLogger("chttp_server")

#: What brings the message store's tables up to date in a Django project.
MIGRATE_COMMAND = "python manage.py migrate"


class CertifiedMiddleware:
    """``"chttp_server.django.CertifiedMiddleware"`` in ``MIDDLEWARE`` (see the module docstring).

    Configured by ``settings.CHTTP`` (:mod:`chttp_server.django.conf`); a configuration
    that cannot give the guarantee raises :class:`ConfigurationError` here, at start-up.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        self.conf = read_settings(getattr(settings, SETTING_NAME, None))
        check_configuration(self.conf, CertifiedMiddleware)
        upload_problem = upload_limit_problem(self.conf.max_request_bytes)
        if upload_problem is not None:
            log.warning("chttp: %s (%s)", upload_problem, UPLOAD_LIMIT_WARNING)
        self.alias = self.conf.database
        self.engine = django_engine(self.alias)
        self.store = MessageStore(self.engine, retention=self.conf.retention,
                                  claim_timeout=self.conf.claim_timeout,
                                  prepared_statements=self.conf.prepared_statements)
        self.journal = journal_for(self.conf.journal, self.alias)
        install(self.alias)  # a view's statements from another thread are refused
        self._ready = False
        self._ready_lock = threading.Lock()
        self._prepare(at_start=True)

    # -- schema ----------------------------------------------------------------------

    def _prepare(self, *, at_start: bool) -> None:
        """Initialise the dialect and check the schema; a store that is down waits.

        docs/protocol.rst §4: a receiver whose store is down starts and answers 503
        until it returns. A schema behind the code names ``manage.py migrate``.
        """
        wrapper = connections[self.alias]
        opened_here = wrapper.connection is None
        try:
            with django_errors(), unreachable_as_store_error():
                initialize(self.engine)
                with self.engine.connect() as connection:
                    migrate.check_schema(connection)
        except StoreUnreachable as exc:
            if not at_start:
                raise
            log.warning("chttp message store unreachable, will answer 503 until it is: %s",
                        exc.reason)
            return
        except SchemaOutOfDateError as exc:
            state = ("have not been created" if exc.current is None
                     else f"are at revision {exc.current!r}, this code needs {exc.head!r}")
            message = f"the chttp tables in database {self.alias!r} {state}: run `{MIGRATE_COMMAND}`"
            if at_start:
                raise ConfigurationError(message) from exc
            log.error("chttp: %s", message)
            raise StoreUnavailable(message, retry_after=self.conf.retry_after) from exc
        finally:
            if at_start and opened_here and not wrapper.in_atomic_block:
                wrapper.close()  # start-up ran in a thread that serves no requests
        self._ready = True

    def _ensure_ready(self) -> None:
        if not self._ready:
            with self._ready_lock:
                if not self._ready:
                    self._prepare(at_start=False)

    # -- requests --------------------------------------------------------------------

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request.chttp = None
        try:
            path = request.path_info
            if path.startswith(self.conf.message_prefix):
                return self._message_resource(request, path[len(self.conf.message_prefix):])
            message_id = message_id_of(request.META)
            if message_id is None:
                if self.conf.require_id is not None and self.conf.require_id(request):
                    raise MessageIdRequired("this request must carry X-Message-ID or Idempotency-Key")
                return self.get_response(request)
            return self._certified(request, message_id)
        except ProtocolError as error:
            return responses.problem(error)

    def scope(self, request: HttpRequest) -> str:
        """The principal whose ids this request uses (docs/protocol.rst §1), made to fit
        the store the same way on every database (:func:`chttp_core.wire.scope_key`, §4)."""
        if self.conf.scope is not None:
            return scope_key(str(self.conf.scope(request)))
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return scope_key(str(user.pk))
        return ""

    def incoming(self, request: HttpRequest, message_id: str) -> IncomingMessage:
        """The certified message of ``request``: body (capped, §4), scope, fingerprint."""
        # read_body applies the cap to Content-Length before anything is read, then
        # reads through Django's request (so request.body stays readable by the view).
        # The cap is Django's DATA_UPLOAD_MAX_MEMORY_SIZE where that is smaller: past it
        # request.body refuses, and the answer must be our 413, not Django's HTML 400.
        limit = request_body_limit(self.conf.max_request_bytes)
        try:
            body = read_body({
                "wsgi.input": _RequestBody(request),
                "CONTENT_LENGTH": request.META.get("CONTENT_LENGTH", ""),
                "wsgi.input_terminated": request.META.get("wsgi.input_terminated", False),
            }, limit)
        except RequestDataTooBig:  # a body Django measured itself (no Content-Length)
            raise RequestTooLarge(
                f"a certified request's body is limited to {limit} bytes") from None
        return incoming_message(
            request.method or "GET",
            self._script_name(request) + request.path_info,
            request.META.get("QUERY_STRING", ""),
            body,
            message_id=message_id,
            scope=self.scope(request),
            first_sent=first_sent_of(request.META),
        )

    def _certified(self, request: HttpRequest, message_id: str) -> HttpResponseBase:
        with observe_message(request.META, message_id) as observed, \
                self._store_errors(message_id):
            message = self.incoming(request, message_id)
            with self._message_transaction(message.key, observed, lend=True) as txn:
                stored = txn.claim(message)
                if stored is None:
                    response, expires_at = self._run_view(request, txn, message)
        if stored is not None:
            return self._replay(request, stored)
        if txn.outcome is Outcome.STORE:
            url = self._message_url(request, message.message_id)
            for name, value in message_headers(url, expires_at):
                response.headers[name] = value
        return response

    @contextmanager
    def _store_errors(self, message_id: str) -> Iterator[None]:
        """The receiver's one mapping of store failures (§4), Django's own errors included."""
        with store_errors(retry_after=self.conf.retry_after, message_id=message_id), \
                django_errors():
            yield

    @contextmanager
    def _message_transaction(self, key: MessageKey, observation: Any = NOOP, *,
                             lend: bool = False) -> Iterator[MessageTransaction]:
        """``atomic`` on the alias, and the message transaction joined to its connection.

        Rolling back is ``set_rollback(True)``; committing is leaving ``atomic`` normally,
        unless COMMIT already went with the stored response or the replay's hold
        (psycopg 3, outermost block: :mod:`chttp_server.store_dbapi`), after which
        Django's commit sends nothing and runs its ``on_commit`` hooks as always.

        ``lend`` (a certified request, whose first statement is the claim): on psycopg 3
        in the outermost block ``BEGIN`` also travels with the claim
        (:func:`chttp_server.fused_transaction.lend`), and the connection is given back
        as Django left it before ``atomic`` is left, whatever happened.
        """
        self._ensure_ready()
        django_connection = connections[self.alias]
        # Leaving the outermost atomic block commits; one nested in a transaction of the
        # caller's (Django's TestCase, AUTOCOMMIT = False) only releases a savepoint.
        outermost = django_connection.get_autocommit() and not django_connection.in_atomic_block
        with transaction.atomic(using=self.alias), self.engine.connect() as connection:
            give_back = self.store.lend(connection) if lend and outermost else None
            try:
                txn = MessageTransaction(
                    self.store, key, retry_after=self.conf.retry_after, connection=connection,
                    rollback=partial(transaction.set_rollback, True, using=self.alias),
                    commit_with_response=outermost, observation=observation,
                )
                with txn:
                    yield txn
            finally:
                if give_back is not None:
                    give_back()

    def _run_view(self, request: HttpRequest, txn: MessageTransaction,
                  message: IncomingMessage) -> tuple[HttpResponseBase, Any]:
        """Run the view inside ``txn`` and store (or roll back) its response."""
        context = CertifiedContext(
            message_id=message.message_id,
            scope=message.scope,
            fingerprint=message.fingerprint,
            connection=txn.connection,
            received_at=txn.received_at or self.store.clock(),
            expires_at=txn.expires_at,
            environ=request.META,
            journal=self.journal,
            handler_send_deadline=self.conf.handler_send_deadline,
        )
        request.chttp = context
        try:
            # Under ASGI an async view may leave this thread; its queries must not.
            with message_thread(self.alias):
                with txn.handler_errors():
                    response = self.get_response(request)
                    if means_try_again(response.status_code):
                        lost_connection(self.alias)
                    context.flush()
                collected = responses.collect(response, self.conf.max_response_bytes)
            txn.complete(collected.status, collected.headers, collected.body,
                         too_large=collected.too_large, limit=self.conf.max_response_bytes)
        finally:
            context.close()
        return response, txn.expires_at

    # -- answers from the store ------------------------------------------------------

    def _replay(self, request: HttpRequest, stored: StoredMessage) -> HttpResponseBase:
        """The stored response, byte for byte, with the replay headers (§2, §3)."""
        assert stored.status is not None and stored.body is not None
        url = self._message_url(request, stored.key.message_id)
        body = b"" if request.method == "HEAD" else stored.body
        return responses.rebuild(stored.status, replay_headers(stored, url), body)

    def _message_resource(self, request: HttpRequest, message_id: str) -> HttpResponseBase:
        """GET / HEAD replays a stored response, DELETE acknowledges it (§3)."""
        method = (request.method or "GET").upper()
        if method not in ("GET", "HEAD", "DELETE"):
            return responses.method_not_allowed()
        if not is_valid_message_id(message_id):
            raise MessageNotFound(message_id=None)
        with self._store_errors(message_id):
            key = MessageKey(self.scope(request), message_id)
            with self._message_transaction(key) as txn:
                stored = txn.acknowledge() if method == "DELETE" else txn.fetch()
        if stored is None:
            raise MessageNotFound(message_id=message_id)
        if method == "DELETE":
            return responses.no_content()
        return self._replay(request, stored_answer(stored, None, self.store.clock()))

    def _message_url(self, request: HttpRequest, message_id: str) -> str:
        return message_url(self._script_name(request), self.conf.message_prefix, message_id)

    @staticmethod
    def _script_name(request: HttpRequest) -> str:
        return str(get_script_name(request.META)).rstrip("/")


class _RequestBody:
    """``request.body`` as the stream :func:`read_body` reads, read only when asked."""

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        body: bytes = self.request.body
        end = len(body) if size is None or size < 0 else self.position + size
        chunk = body[self.position:end]
        self.position += len(chunk)
        return chunk
