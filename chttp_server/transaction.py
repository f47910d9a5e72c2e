"""One certified message's transaction, and the one translation of store errors into answers.

Every front end (the WSGI middleware, the Flask extension, the Django middleware)
carries a certified message through the same steps, so the steps live here once::

    with MessageTransaction(store, key, retry_after=1) as txn:   # begin (own mode)
        stored = txn.claim(message)            # None: claimed, run the handler
        if stored is not None:                 # a retry: already rolled back,
            return replay(stored)              #   decided (replay / 422 / 410)
        with txn.handler_errors():             # the handler's statements
            response = run_handler(txn.connection)
        if txn.complete(status, headers, body, too_large=...):
            ...                                # stored and committed: send it
        else:
            ...                                # 5xx / 429: rolled back, send it
    # leaving the block on an exception rolls back; the connection is closed

    with MessageTransaction(store, key, retry_after=1) as txn:   # the message resource
        stored = txn.fetch()                   # GET: the row or None (read, rolled back)
        stored = txn.acknowledge()             # DELETE: tombstone it, committed

Two modes:

* **own** (``connection=None``): :meth:`begin` (or entering the ``with``) opens a
  connection from the store's engine and begins; :meth:`complete` commits; leaving the
  block closes the connection. The WSGI middleware and the Flask extension use it.
* **joined** (``connection=<sqlalchemy Connection>``): the front end owns the
  connection and its transaction (Django wraps its own DB-API connection and runs the
  block inside ``transaction.atomic``). :meth:`begin` and ``close`` do nothing to the
  connection; committing and rolling back call the ``commit`` / ``rollback`` callables
  given, and are skipped when they are ``None`` (the front end does it itself, e.g. by
  leaving ``atomic`` normally or after ``transaction.set_rollback(True)``). Read
  :attr:`outcome` after :meth:`complete` (or a claim that found a stored row) to know
  which the protocol asked for.

Errors: every method runs inside :func:`store_errors`, the receiver's one translation
of store errors into protocol answers — :class:`~chttp_core.errors.StoreUnreachable`
and a connection lost under any statement become 503 ``store-unavailable`` with
``Retry-After`` (a generic detail on the wire, the driver's words in the log: §4);
:class:`~chttp_core.errors.ClaimTimedOut` becomes 409 ``message-in-progress``; a schema
behind the code becomes 503 naming the upgrade command. Protocol refusals
(:mod:`chttp_server.decisions`) are raised as they are. Front ends wrap anything else
that touches the store (schema preparation, the handler's run) in :func:`store_errors`
or :meth:`MessageTransaction.handler_errors`, never in a mapping of their own.
"""

from __future__ import annotations

import logging
import sys
import weakref
from contextlib import AbstractContextManager
from datetime import datetime
from types import TracebackType
from typing import Any, Callable

from sqlalchemy import Connection, RootTransaction
from sqlalchemy import exc as sa_exc

from chttp_core.telemetry import NOOP
from chttp_core.errors import ClaimLost, StoreUnreachable
from chttp_server.decisions import (
    IncomingMessage,
    Outcome,
    check_fresh_claim,
    outcome_for,
    stored_answer,
)
from chttp_server.errors import HandlerEndedTransaction
from chttp_server.store import MessageKey, MessageStore, StoredMessage
from chttp_server.store_errors import ENDED, store_errors
from chttp_server.telemetry import PROCESSED, REPLAYED, ROLLED_BACK

__all__ = ["MessageTransaction", "store_errors"]  # store_errors: re-exported for its users

log = logging.getLogger("chttp_server")

Headers = list[tuple[str, str]]

class MessageTransaction:
    """Begin, claim, complete, commit or roll back one message (see the module docstring)."""

    def __init__(
        self,
        store: MessageStore,
        key: MessageKey,
        *,
        # Seconds a sender is told to wait after 503 store-unavailable.
        retry_after: int,
        # Joined mode: the front end's connection, its transaction already begun.
        connection: Connection | None = None,
        # Joined mode: how to commit / roll back (None: the front end does it itself).
        commit: Callable[[], None] | None = None,
        rollback: Callable[[], None] | None = None,
        # Joined mode: the front end's commit() after the stored response finds nothing
        # to do if COMMIT already went with it (psycopg 3 under Django's outermost
        # atomic: chttp_server.store_dbapi), so the store may send it there.
        commit_with_response: bool = False,
        # The request's chttp_server.telemetry.observe_message (the no-op: nothing reported).
        observation: Any = NOOP,
    ) -> None:
        if connection is None and (commit is not None or rollback is not None):
            raise ValueError("commit= and rollback= are for a joined connection only")
        self.store = store
        self.key = key
        self.retry_after = retry_after
        self.joined = connection is not None
        self._connection = connection
        self._commit = commit
        self._rollback = rollback
        self._commit_with_response = commit_with_response
        #: When the claim was made: the message's ``received_at``.
        self.received_at: datetime | None = None
        #: What the protocol asked for: ``STORE`` once committed, ``ROLL_BACK`` once
        #: rolled back (a retry answered from the store, a 5xx), ``None`` before.
        self.outcome: Outcome | None = None
        # A weak reference: the guard lives in this object, and a cycle would leave every
        # request's transaction (and its Connection) to the cyclic garbage collector.
        # (weakref.ref of the object, not WeakMethod of the bound method: the same answer
        # for a fraction of the cost, paid on every request.)
        probe = weakref.ref(self)
        self._guard = store_errors(retry_after=retry_after, message_id=key.message_id,
                                   lost=lambda: bool((txn := probe()) and txn.connection_lost()))
        self.observed = observation
        #: Own mode: the transaction the store began, which the handler must not end.
        self._root: RootTransaction | None = None

    # -- connection ------------------------------------------------------------------

    @property
    def connection(self) -> Connection:
        """The connection the claim, the handler and the stored response share."""
        if self._connection is None:
            raise RuntimeError("the message transaction has not begun")
        return self._connection

    @property
    def has_connection(self) -> bool:
        """True while the transaction holds a connection (begun, not yet closed)."""
        return self._connection is not None

    @property
    def expires_at(self) -> datetime:
        if self.received_at is None:
            raise RuntimeError("the message has not been claimed")
        return self.received_at + self.store.retention

    def connection_lost(self) -> bool:
        """True if the message's connection is known to be dead (see :meth:`MessageStore.lost`)."""
        return self._connection is not None and self.store.lost(self._connection)

    def begin(self) -> MessageTransaction:
        """Open a connection and begin (own mode); nothing in joined mode."""
        if self._connection is None:
            with self._guard:
                self._open()
        return self

    def _open(self) -> None:
        self._connection = self.store.begin()
        # Where the connection's commit()/rollback() would not reach the server, a
        # handler calling them must be caught (complete); elsewhere they do what they say.
        self._root = (self._connection.get_transaction()
                      if self.store.says_begin_itself(self._connection) else None)

    def close(self) -> None:
        """Roll back whatever is still open and release the connection (own mode)."""
        if self._connection is None or self.joined:
            return
        connection, self._connection = self._connection, None
        try:
            if self.outcome is None:  # else committed, rolled back or aborted already
                self._quiet_rollback(connection)
        finally:
            connection.close()

    def __enter__(self) -> MessageTransaction:
        return self.begin()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None and self.outcome is None:
            self.abort()
        self.close()

    # -- a certified request ---------------------------------------------------------

    def claim(self, message: IncomingMessage) -> StoredMessage | None:
        """Claim the message's key: ``None`` if it is ours to run, else the row to replay.

        A retry of a completed message rolls back and is decided at once: the returned
        row is replayable; a reused id (422) or an acknowledged/expired one (410) raises.
        A new claim of a message older than the retention raises 412.
        """
        now = self.store.clock()
        with self.observed.claim(), self._guard:
            try:
                existing = self.store.claim(self.connection, self.key, message.fingerprint, now)
            except StoreUnreachable as exc:
                if not self._reconnected_after(exc):
                    raise
                existing = self.store.claim(self.connection, self.key, message.fingerprint, now)
            if existing is not None:
                self._end_reading()
        if existing is not None:
            self._report_without_response(existing)
            replay = stored_answer(existing, message.fingerprint, now)
            self.observed.finish(REPLAYED, replay.status)
            return replay
        check_fresh_claim(message, now, self.store.retention)
        self.received_at = now
        return None

    def _reconnected_after(self, error: StoreUnreachable) -> bool:
        """After a first statement that met a dead pooled connection: begin on a fresh one.

        The store's engine has no pre-ping (a ``SELECT 1`` round trip on every checkout,
        the costliest part of a certified request beyond the application's own work), so
        a connection the database dropped while it sat in the pool fails the claim, the
        first statement of the transaction: nothing of it ran. SQLAlchemy then
        invalidates the whole pool; one retry on a fresh connection is safe, and if the
        store is really down the reconnect fails and the answer is 503 (docs/protocol.rst §4).
        Own mode only: a joined connection belongs to the front end.
        """
        cause = error.__cause__
        if self.joined or not (isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated):
            return False
        self.close()
        self._open()
        return True

    def handler_errors(self) -> AbstractContextManager[None]:
        """Around the handler's run: a statement that lost the store's connection is 503.

        The handler's other errors (its own bad statement, a bug) propagate: they are
        the application's failure, rolled back when the block is left.
        """
        return self.observed.handler(self._guard) if self.observed else self._guard

    def complete(self, status: int, headers: Headers, body: bytes, *,
                 too_large: bool = False, limit: int = 0) -> bool:
        """Store the response and commit (True), or roll back a 5xx / 429 (False).

        ``too_large``: the response passed ``limit`` bytes and cannot be stored:
        raises 500 ``response-too-large`` (leaving the block rolls back).
        """
        decision = outcome_for(status, too_large=too_large, limit=limit,
                               message_id=self.key.message_id)
        if self._root is not None and not self._root.is_active:
            # Not a no-op to forgive: the server never saw it (the store's own
            # transaction runs in autocommit, chttp_server.store_dbapi), so writes the
            # handler meant to undo are still in it, or writes it meant to make durable
            # would wait for the response. Roll back the whole message instead.
            raise HandlerEndedTransaction(ENDED)
        with self._guard:
            if decision is Outcome.ROLL_BACK:
                if self.connection_lost():
                    # A 5xx the application built from its own failed statement (Flask
                    # and Django turn a view's exception into a 500 page): the failure
                    # was the store's, and the answer is 503 with Retry-After (§4).
                    self.abort()
                    raise StoreUnreachable("the connection was lost while the handler ran")
                self.rollback()
                self.observed.finish(ROLLED_BACK, status)
                return False
            with self.observed.store(len(body)):
                try:
                    self.store.complete(self.connection, self.key, status, headers, body,
                                        commit=not self.joined or self._commit_with_response)
                except ClaimLost as lost:
                    self.abort()
                    log.error("chttp: the handler of message %r (scope %r) ended the message's "
                              "transaction itself (%s): nothing was stored. If it committed, "
                              "the claim and the work before that commit are durable, and "
                              "retries are answered 410 message-outcome-unknown",
                              self.key.message_id, self.key.scope, lost.how)
                    raise HandlerEndedTransaction(ENDED) from lost
                self._commit_guarded()
        self.observed.finish(PROCESSED, status)
        return True

    # -- the message resource (§3) ---------------------------------------------------

    def fetch(self) -> StoredMessage | None:
        """The stored row (GET of the message URL), read and the transaction ended as a
        replay's is (:meth:`_end_reading`); ``None`` if unknown."""
        with self._guard:
            stored = self.store.lookup(self.connection, self.key)
            self._end_reading()
        if stored is not None:
            self._report_without_response(stored)
        return stored

    def _end_reading(self) -> None:
        """End a transaction that read a stored row it will answer from (a replay, a GET of
        the message URL): on PostgreSQL committed once the synchronous standbys hold the
        row (:meth:`MessageStore.hold_until_replicated`), so no answer is given from a
        commit a failover could still lose; elsewhere rolled back (it wrote nothing)."""
        if not self.store.holds_reads:
            self.rollback()
        elif self.joined:  # the front end commits: the statement goes first (with COMMIT
            # where the front end's commit then finds nothing to do, store_dbapi.hold)
            self.store.hold_until_replicated(self.connection, commit=self._commit_with_response)
            self.commit()
        else:
            self.commit(hold_until_replicated=True)
        self.outcome = Outcome.ROLL_BACK  # it wrote nothing: nothing of it stays

    def _report_without_response(self, stored: StoredMessage) -> None:
        """Log a row committed without its response (answered 410 message-outcome-unknown).

        Only a handler that ended the message's transaction itself leaves one (§2); the
        operator should hear of every message whose outcome the receiver cannot give.
        """
        if stored.status is None and not stored.acknowledged:
            log.error("chttp: message %r (scope %r) was committed without a response, "
                      "received %s: a handler ended its transaction itself; its outcome is "
                      "unknown and retries are answered 410 message-outcome-unknown",
                      stored.key.message_id, stored.key.scope, stored.received_at.isoformat())

    def acknowledge(self) -> StoredMessage | None:
        """Tombstone the row (DELETE of the message URL) and commit; the row as it was."""
        with self._guard:
            stored = self.store.acknowledge(self.connection, self.key)
            self.commit()
        return stored

    # -- commit / rollback -----------------------------------------------------------

    def commit(self, *, hold_until_replicated: bool = False) -> None:
        with self._guard:
            self._commit_guarded(hold_until_replicated)

    def _commit_guarded(self, hold_until_replicated: bool = False) -> None:
        """:meth:`commit`, for a caller already inside the transaction's error guard."""
        if not self.joined:  # the store's commit ends the claim's guard itself
            self.store.commit(self.connection, hold_until_replicated=hold_until_replicated)
        else:
            self.store.end_claim(self.connection)
            if self._commit is not None:
                self._commit()
        self.outcome = Outcome.STORE

    def rollback(self) -> None:
        with self._guard:
            if not self.joined:  # the store's rollback ends the claim's guard itself
                self.store.rollback(self.connection)
            else:
                self.store.end_claim(self.connection)
                if self._rollback is not None:
                    self._rollback()
        self.outcome = Outcome.ROLL_BACK

    def abort(self) -> None:
        """Roll back after a failure, keeping the failure: a broken rollback is only logged."""
        self.outcome = Outcome.ROLL_BACK
        if self._connection is None:
            return
        self.store.end_claim(self._connection)
        if not self.joined:
            self._quiet_rollback(self._connection)
        elif self._rollback is not None:
            try:
                self._rollback()
            except Exception:  # noqa: BLE001 - the original failure is the one to report
                log.debug("rollback failed after an error", exc_info=sys.exc_info())

    def _quiet_rollback(self, connection: Connection) -> None:
        try:
            self.store.rollback(connection)
        except (StoreUnreachable, sa_exc.SQLAlchemyError):
            log.debug("rollback failed on a broken connection", exc_info=sys.exc_info())

    def __repr__(self) -> str:
        mode = "joined" if self.joined else "own"
        return f"<MessageTransaction {mode} scope={self.key.scope!r} id={self.key.message_id!r}>"
