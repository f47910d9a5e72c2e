"""The message store: claim, complete, look up, acknowledge and purge certified messages.

It speaks SQLAlchemy Core only and never sees WebOb: the message transaction
(:mod:`chttp_server.transaction`) hands it keys, fingerprints and response parts, and
owns the transaction. Every method that takes a ``connection`` runs inside the caller's
transaction, so the claim, the application's writes and the stored response commit or
roll back as one (docs/protocol.rst §2).

Errors: the store is the one place that knows what its own statements' failures mean.
A lost connection, a refused connect or a lock held past SQLite's busy timeout raises
:class:`~chttp_core.errors.StoreUnreachable`; a claim still held by another transaction
after ``claim_timeout`` raises :class:`~chttp_core.errors.ClaimTimedOut`. Other errors
(a bad statement) propagate as they are. Turning these into HTTP answers is the
receiver's job, done once (:func:`chttp_server.transaction.store_errors`).

The claim is an ``INSERT … ON CONFLICT DO NOTHING``. On PostgreSQL a second transaction
inserting the same key blocks on the first one's uncommitted row until it commits (then
the insert does nothing and we read the committed row) or rolls back (then the insert
succeeds and the claim is ours); ``lock_timeout`` bounds that wait. On SQLite every
transaction starts with ``BEGIN IMMEDIATE`` (see :mod:`chttp_core.db`), so writers are
serialised and a claimer can only ever meet committed rows.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from chttp_core import migrate
from chttp_core.db import begin_immediately
from chttp_core.errors import ClaimLost, ClaimTimedOut
from chttp_core.schema import STATE_ACKNOWLEDGED, STATE_COMPLETED, messages
from chttp_server import claim_guard, fused_transaction, replication, store_dbapi, store_sql
from chttp_server.messages import (
    Headers,
    MessageKey,
    StoredMessage,
    headers_json,
    stored_message,
    utcnow,
)
from chttp_server.purge import purge_expired
from chttp_server.store_errors import unreachable_as_store_error

__all__ = ["MessageKey", "StoredMessage", "MessageStore", "unreachable_as_store_error", "utcnow"]

#: Every statement the store runs is wrapped in it (chttp_server.store_errors).
_UNREACHABLE = unreachable_as_store_error()



class MessageStore:
    """The ``chttp_messages`` table behind one engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        retention: timedelta,
        claim_timeout: float,
        clock: Callable[[], datetime] = utcnow,
        # False: SQLAlchemy statements on every driver (the portable path, kept tested).
        dbapi_statements: bool = True,
        # True: psycopg2 prepares the claim and the stored response once per pooled
        # connection (PREPARE/EXECUTE: less planning per request). Only on a direct
        # PostgreSQL connection: a transaction-mode pooler (PgBouncer) hands the next
        # transaction another server session, where the statement does not exist.
        # (False still prepares both in the store's own transactions, on demand
        # per server session, which is safe behind a pooler: store_dbapi.claim.)
        prepared_statements: bool = False,
    ) -> None:
        self.engine = engine
        self.retention = retention
        self.claim_timeout = claim_timeout
        self.clock = clock
        self._postgresql = engine.dialect.name == "postgresql"
        #: psycopg2: the claim and the stored response skip SQLAlchemy's execution
        #: layer (chttp_server.store_dbapi); any other driver runs the statements below.
        self._dbapi = dbapi_statements and store_dbapi.supports(engine)
        self._prepared = self._dbapi and prepared_statements and store_dbapi.prepares(engine)
        #: psycopg2 on SQLAlchemy's own pools: a transaction the store begins itself sends
        #: BEGIN with the claim and COMMIT with the stored response (store_dbapi, "Fewer
        #: round trips"): two round trips fewer per certified request.
        self._fused = self._dbapi and store_dbapi.fuses(engine)
        if self._fused:
            fused_transaction.install(engine)
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        if engine.dialect.name == "sqlite":
            claim_guard.install_sqlite(engine)

    # -- connections -----------------------------------------------------------------

    def begin(self) -> Connection:
        """Open a connection and begin a transaction, or raise :class:`StoreUnreachable`.

        End it with :meth:`commit` or :meth:`rollback` (not the connection's own
        ``commit()``: on PostgreSQL + psycopg2 the server-side ``BEGIN`` travels with the
        first store statement and only the store says ``COMMIT``; see
        :mod:`chttp_server.store_dbapi`).
        """
        with _UNREACHABLE:
            connection = self.engine.connect()
            try:
                # On SQLite the claim holds the write lock from the start (module docstring).
                begin_immediately(connection).begin()
                if self._fused:
                    fused_transaction.begin(connection)
            except BaseException:
                connection.close()
                raise
        return connection

    def says_begin_itself(self, connection: Connection) -> bool:
        """True if this connection's transaction is one the store begins and ends in SQL
        (psycopg2, :mod:`chttp_server.store_dbapi`): its ``commit()`` / ``rollback()``
        do nothing on the server; only :meth:`commit` and :meth:`rollback` end it."""
        return self._fused and fused_transaction.fused(connection)

    @staticmethod
    def lost(connection: Connection) -> bool:
        """True if ``connection`` is known to be dead, without a round trip
        (:func:`chttp_server.claim_guard.lost`)."""
        return claim_guard.lost(connection)

    @staticmethod
    def end_claim(connection: Connection) -> None:
        """The message claimed on ``connection`` is done (stored, or about to be rolled
        back by whoever owns the transaction): stop guarding its statements."""
        claim_guard.end(connection)

    def commit(self, connection: Connection, *, hold_until_replicated: bool = False) -> None:
        """COMMIT; ``hold_until_replicated``: one that returns only once the synchronous
        standbys hold what the transaction read (:meth:`hold_until_replicated`), in the
        same round trip as the COMMIT where the store says COMMIT itself."""
        claim_guard.end(connection)
        hold = hold_until_replicated and self._postgresql
        with _UNREACHABLE:
            # A fused transaction says COMMIT itself (or it went with the stored response).
            said_commit = self._fused and store_dbapi.end(
                connection, f"{replication.HOLD_SQL}; COMMIT" if hold else "COMMIT")
            if hold and not said_commit:
                connection.execute(replication.HOLD_UNTIL_REPLICATED)
            connection.commit()

    def rollback(self, connection: Connection) -> None:
        claim_guard.end(connection)
        with _UNREACHABLE:
            if connection.invalidated:
                connection.rollback()  # what SQLAlchemy asks for after a disconnect
                return
            if self._fused:
                store_dbapi.end(connection, "ROLLBACK")
            if connection.in_transaction():
                connection.rollback()

    @property
    def schema_ready(self) -> bool:
        """True once :meth:`ensure_schema` has succeeded in this process."""
        return self._schema_ready

    def ensure_schema(self, *, upgrade: bool) -> None:
        """:meth:`prepare_schema` until it succeeds once, then nothing (one flag read).

        Every front end calls this before each message while the schema is not known
        to be ready, so a receiver that started while its store was down checks — or,
        with ``upgrade``, upgrades — the schema on the first request after the store is
        back, and serves it (docs/protocol.rst §4). One thread at a time runs it; the
        others wait for that one's outcome rather than each upgrading.
        """
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self.prepare_schema(upgrade=upgrade)
                self._schema_ready = True

    def prepare_schema(self, *, upgrade: bool) -> None:
        """Bring the schema to head (``upgrade``) or check that it is there.

        Raises :class:`~chttp_core.errors.SchemaOutOfDateError` for a schema behind the
        code and :class:`StoreUnreachable` for a store that is down.
        """
        with _UNREACHABLE:
            if upgrade:
                migrate.upgrade(self.engine)
            else:
                migrate.check_schema(self.engine)

    # -- the certified request's transaction -----------------------------------------

    def claim(
        self, connection: Connection, key: MessageKey, fingerprint: str, now: datetime
    ) -> StoredMessage | None:
        """Claim ``key`` for this transaction; return ``None`` if claimed, else the stored row.

        Raises :class:`ClaimTimedOut` if another transaction still holds the key
        after :attr:`claim_timeout` seconds (the transaction is then unusable: roll back).
        ``now`` becomes the message's ``received_at``; its expiry follows from the retention.
        """
        insert_claim = self._insert_claim_postgresql if self._postgresql else self._insert_claim_sqlite
        for _attempt in range(3):
            with _UNREACHABLE:
                claimed, existing = insert_claim(connection, key, fingerprint, now)
            if claimed:
                return None
            if existing is None:
                existing = self.lookup(connection, key)
            if existing is not None:
                return existing
            # The conflicting row was purged between our insert and our read: claim again.
        raise ClaimTimedOut(key.message_id, self.claim_timeout, retry_after=1)

    def _insert_claim_sqlite(
        self, connection: Connection, key: MessageKey, fingerprint: str, now: datetime
    ) -> tuple[bool, StoredMessage | None]:
        """Insert the claim row: ``(True, None)`` if claimed, ``(False, None)`` on a conflict.

        ``BEGIN IMMEDIATE`` already serialised this transaction, so a conflict can only be
        a committed row.
        """
        statement = (
            sqlite_insert(messages)
            .values(
                scope=key.scope,
                message_id=key.message_id,
                fingerprint=fingerprint,
                state=STATE_COMPLETED,
                received_at=now,
                expires_at=now + self.retention,
            )
            .on_conflict_do_nothing(index_elements=["scope", "message_id"])
        )
        if connection.execute(statement).rowcount != 1:
            return False, None
        claim_guard.mark_sqlite(connection)
        return True, None

    def _insert_claim_postgresql(
        self, connection: Connection, key: MessageKey, fingerprint: str, now: datetime
    ) -> tuple[bool, StoredMessage | None]:
        """Insert the claim row in one round trip (see :data:`chttp_server.store_sql.PG_CLAIM`).

        ``(True, None)`` if claimed; ``(False, row)`` on a conflict, ``row`` being ``None``
        when the conflicting row is not visible to this statement.
        """
        params = {
            "scope": key.scope,
            "message_id": key.message_id,
            "fingerprint": fingerprint,
            "state": STATE_COMPLETED,
            "received_at": now,
            "expires_at": now + self.retention,
            "lock_timeout": f"{int(self.claim_timeout * 1000)}ms",
        }
        try:
            row: Any
            if self._dbapi:
                row = store_dbapi.claim(connection, params, prepared=self._prepared)
            else:
                row = connection.execute(store_sql.PG_CLAIM, params).one()
        except sa_exc.DBAPIError as exc:
            # By SQLSTATE, not class: psycopg's lock timeout is an OperationalError,
            # asyncpg's reaches SQLAlchemy as a plain DBAPIError.
            if claim_guard.sqlstate(exc) == store_sql.PG_LOCK_NOT_AVAILABLE:
                raise ClaimTimedOut(
                    key.message_id, self.claim_timeout, retry_after=max(1, round(self.claim_timeout))
                ) from exc
            raise
        if row.claimed:
            return True, None
        return False, stored_message(row) if row.scope is not None else None

    def complete(
        self, connection: Connection, key: MessageKey, status: int, headers: Headers, body: bytes,
        *, commit: bool = False,
    ) -> None:
        """Store the response of the message claimed by this transaction.

        ``commit``: the caller commits right after (:meth:`commit`); where the store
        began the transaction itself on psycopg2, ``COMMIT`` then travels with the
        response's UPDATE (one round trip) and :meth:`commit` finds nothing left to do.

        Raises :class:`ClaimLost`, storing nothing, if the transaction open on
        ``connection`` is not the one that claimed ``key`` (someone — the handler —
        committed or rolled it back in between): checked within the UPDATE itself on
        PostgreSQL (:data:`chttp_server.claim_guard.PG_CLAIMING`), by releasing the
        claim's savepoint on SQLite (:mod:`chttp_server.claim_guard`).
        """
        # The claim lost is told apart before the classification of unreachable stores:
        # a missing prepared statement is an OperationalError to psycopg2 (claim_guard).
        with _UNREACHABLE:
            try:
                if not self._postgresql:
                    claim_guard.release_sqlite(connection, key.message_id)
                    connection.execute(store_sql.COMPLETE, {
                        "key_scope": key.scope, "key_id": key.message_id,
                        "new_status": status, "new_headers": headers_json(headers),
                        "new_body": body,
                    })
                elif self._dbapi:
                    store_dbapi.complete(connection, {
                        "scope": key.scope, "message_id": key.message_id, "status": status,
                        "headers": headers_json(headers), "body": body,
                    }, prepared=self._prepared, commit=commit)
                else:
                    connection.execute(store_sql.PG_COMPLETE, {
                        "key_scope": key.scope, "key_id": key.message_id,
                        "new_status": status, "new_headers": headers_json(headers),
                        "new_body": body,
                    })
            except sa_exc.DBAPIError as exc:
                if claim_guard.claim_lost(exc):
                    raise ClaimLost(key.message_id, "another transaction is open on the "
                                    "connection, or none") from exc
                raise

    # -- the message resource --------------------------------------------------------

    def lookup(self, connection: Connection, key: MessageKey) -> StoredMessage | None:
        with _UNREACHABLE:
            row: Any
            if self._dbapi:
                row = store_dbapi.lookup(connection, key.scope, key.message_id)
            else:
                row = connection.execute(
                    store_sql.LOOKUP, {"key_scope": key.scope, "key_id": key.message_id}
                ).first()
        return stored_message(row) if row is not None else None

    @property
    def holds_reads(self) -> bool:
        """True if a transaction that answers from a stored row must end with
        :meth:`hold_until_replicated` and a commit (PostgreSQL), not a rollback."""
        return self._postgresql

    def hold_until_replicated(self, connection: Connection, *, commit: bool = False) -> bool:
        """Make this transaction's end wait until the synchronous standbys hold what it read
        (:mod:`chttp_server.replication` says why). True if the caller must commit (not
        roll back) for that wait to happen; False on SQLite. (:meth:`commit` with
        ``hold_until_replicated`` sends it with the COMMIT where it can.)

        ``commit``: the caller's commit follows at once and finds nothing to do if COMMIT
        went already (a joined transaction whose front end's commit reads the server's
        status: psycopg 3 under Django's outermost ``atomic``), so on psycopg 3 and on a
        fused connection the COMMIT travels with the statement (:func:`store_dbapi.hold`).
        """
        if not self._postgresql:
            return False
        with _UNREACHABLE:
            if self._dbapi:
                store_dbapi.hold(connection, commit=commit)
            else:
                connection.execute(replication.HOLD_UNTIL_REPLICATED)
        return True

    def lend(self, connection: Connection) -> Callable[[], None] | None:
        """Django's outermost ``atomic``: on psycopg 3 the claim says ``BEGIN`` itself, and
        on psycopg 3 and psycopg2 a view's statements after it ended the transaction are
        refused (:func:`chttp_server.fused_transaction.lend`; the store's statements must
        be the DB-API ones, :mod:`chttp_server.store_dbapi`). The function that undoes
        it, or None where nothing changed."""
        return fused_transaction.lend(connection) if self._dbapi else None

    def acknowledge(self, connection: Connection, key: MessageKey) -> StoredMessage | None:
        """Drop the stored response, keep the tombstone; return the row as it was, or None."""
        existing = self.lookup(connection, key)
        if existing is None or existing.acknowledged:
            return existing
        with _UNREACHABLE:
            connection.execute(
                update(messages)
                .where(messages.c.scope == key.scope, messages.c.message_id == key.message_id)
                .values(state=STATE_ACKNOWLEDGED, status=None, headers=None, body=None)
            )
        return existing

    # -- housekeeping ----------------------------------------------------------------

    def purge(self, *, batch_size: int = 1000, max_batches: int | None = None,
              pause: float = 0.0, share: float | None = None) -> int:
        """Delete expired rows in batches of ``batch_size``, each its own short transaction.

        On PostgreSQL the batch is chosen with ``FOR UPDATE SKIP LOCKED`` so the purge
        never waits on, nor blocks, a live claim. ``pause``: seconds to sleep between
        batches, leaving the database to live traffic meanwhile (like PostgreSQL's own
        ``vacuum_cost_delay``): a purge of a large backlog then takes longer and costs
        live requests less. ``share`` paces it by what it observes instead: at most that
        fraction of the time spent deleting, the pauses scaled from each batch's own
        duration (:func:`chttp_server.purge.purge_expired`). Returns the number of rows
        deleted.
        """
        return purge_expired(self.engine, now=self.clock(), skip_locked=self._postgresql,
                             batch_size=batch_size, max_batches=max_batches, pause=pause,
                             share=share)

    def count(self) -> int:
        """How many message rows (completed and tombstones) the store holds."""
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(messages)).scalar_one())

