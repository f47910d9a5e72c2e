"""What a handler sees of its certified request: ``environ["chttp.context"]``.

The context carries the message's identity and the one database transaction that the
message record shares with the handler (docs/protocol.rst §2). Whatever the handler writes
through :attr:`CertifiedContext.connection` or :attr:`CertifiedContext.session` commits
with the stored response, or not at all.

Side effects outside that transaction go through the context too:
:meth:`CertifiedContext.persist` and :meth:`CertifiedContext.post` (``get``/``put``/
``patch``/``delete``) are the sender's resumable steps, journaled outside the handler's
transaction with ids derived from this message's ``(scope, id)``, so a retried incoming
message re-sends the same outgoing messages (:mod:`chttp_client.incoming`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

if TYPE_CHECKING:  # chttp_client (and httpx) load on a handler's first send, not before
    import httpx

    from chttp_client.context import ResumableContext
    from chttp_client.journal import Journal

__all__ = ["CertifiedContext", "ENVIRON_KEY", "get_context"]

#: The environ key under which the middleware publishes the context.
ENVIRON_KEY = "chttp.context"


class CertifiedContext:
    """The certified request being processed: its id, scope and shared transaction."""

    def __init__(
        self,
        *,
        message_id: str,
        scope: str,
        fingerprint: str,
        connection: Connection,
        received_at: datetime,
        expires_at: datetime,
        environ: dict[str, Any],
        journal: Journal | None = None,
        handler_send_deadline: timedelta | None = None,
    ) -> None:
        self.message_id = message_id
        self.scope = scope
        self.fingerprint = fingerprint
        self.connection = connection
        self.received_at = received_at
        self.expires_at = expires_at
        self.environ = environ
        #: Always False inside a handler: a replay answers from the store and never runs it.
        self.replayed = False
        self._session: Session | None = None
        #: Set by the sender package when a handler makes certified sends of its own.
        self.extensions: dict[str, Any] = {}
        #: The chttp_client.Journal for outgoing sends (None: chosen on first use).
        self.journal = journal
        #: How long one run of the handler waits for a send's answer (None: no bound).
        self.handler_send_deadline = handler_send_deadline
        self._outgoing: ResumableContext | None = None

    @property
    def session(self) -> Session:
        """An ORM session bound to the shared connection, made on first use.

        It joins the request's transaction: ``session.commit()`` only flushes into it
        and the middleware commits once, with the stored response (SQLAlchemy's
        ``join_transaction_mode="conditional_savepoint"``). ``session.rollback()``
        would end the message's transaction (refused with
        :class:`~chttp_server.errors.HandlerEndedTransaction` on PostgreSQL + psycopg2):
        undo part of the work inside ``session.begin_nested()`` instead.
        """
        if self._session is None:
            self._session = Session(bind=self.connection, autoflush=True)
        return self._session

    def flush(self) -> None:
        """Push pending ORM changes into the transaction before the response is stored."""
        if self._session is not None:
            self._session.flush()

    # -- the handler as a sender (chttp_client.incoming) --------------------------------

    @property
    def outgoing(self) -> ResumableContext:
        """The handler's resumable context, opened on first use.

        One layer: the sender's own context for incoming ``(scope, id)``
        (:func:`chttp_client.incoming.open_incoming_context`), closed with the request.
        """
        if self._outgoing is None:
            from chttp_client.incoming import journal_for_engine, open_incoming_context

            journal = self.journal or journal_for_engine(self.connection.engine)
            self._outgoing = open_incoming_context(
                journal, scope=self.scope, message_id=self.message_id,
                send_deadline=self.handler_send_deadline)
        return self._outgoing

    def persist(self, value_or_callable: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Record a value once per incoming message; it survives the handler's rollback."""
        return self.outgoing.persist(value_or_callable, *args, **kwargs)

    def checkpoint(self) -> None:
        """Make the values persisted so far durable now, before a side effect that is
        neither a certified send nor a write in this request's transaction."""
        self.outgoing.checkpoint()

    def send(self, method: str, url: str, **options: Any) -> httpx.Response:
        """A certified send whose id derives from this message's ``(scope, id)`` and step."""
        return self.outgoing.send(method, url, **options)

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

    def close(self) -> None:
        if self._outgoing is not None:
            from chttp_client.incoming import close_incoming_context

            outgoing, self._outgoing = self._outgoing, None
            close_incoming_context(outgoing)
        if self._session is not None:
            self._session.close()
            self._session = None

    def __repr__(self) -> str:
        return f"<CertifiedContext scope={self.scope!r} message_id={self.message_id!r}>"


def get_context(environ: dict[str, Any]) -> CertifiedContext | None:
    """The context of a certified request, ``None`` for one that is not certified."""
    context = environ.get(ENVIRON_KEY)
    return context if isinstance(context, CertifiedContext) else None
