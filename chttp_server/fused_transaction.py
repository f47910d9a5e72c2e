"""The store's own transaction on psycopg2, ``BEGIN`` and ``COMMIT`` fused with its
statements: switching the connection in and out of driver autocommit, and guarding it.

:mod:`chttp_server.store_dbapi` says why (five round trips become three) and sends the
statements; this module holds the connection's side of it: :func:`begin` marks a pooled
connection as running a fused transaction and switches it to autocommit, :func:`fused`
and :func:`transaction_status` tell where it stands, :func:`opening` puts ``BEGIN`` in
front of the statement that opens it, :func:`install`'s pool listener ends whatever a
connection still has open when it goes back to the pool, and :func:`guard` refuses,
unsent, any statement a handler would run after ending the transaction itself (in
autocommit it would commit on its own).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

__all__ = ["install", "begin", "fused", "transaction_status", "opening", "guard", "ended", "IDLE"]


#: Where a pooled connection records that the store switched it to autocommit for a
#: transaction of its own (:func:`begin`); its pool record's ``info``, read on check-in.
_FUSED_KEY = "chttp_fused_transaction"
#: The engines whose pools carry the check-in listener of :func:`install`.
_INSTALLED_KEY = "chttp_fused_reset_installed"
#: ``psycopg2.extensions.TRANSACTION_STATUS_IDLE``: no transaction open on the server.
IDLE = 0


def install(engine: Engine) -> None:
    """Give ``engine``'s pool the check-in listener that ends a fused transaction (once).

    Whatever path hands the connection back (a close after an exception, garbage
    collection), the transaction still open on the server is rolled back and the
    connection leaves autocommit before its next user gets it. Idempotent.
    """
    from sqlalchemy import event

    if getattr(engine.pool, _INSTALLED_KEY, False):
        return
    event.listen(engine, "reset", _end_on_checkin)
    setattr(engine.pool, _INSTALLED_KEY, True)


def _end_on_checkin(dbapi_connection: Any, record: Any, reset_state: Any) -> None:
    if record is None or not record.info.pop(_FUSED_KEY, False):
        return
    dbapi_connection.cursor_factory = None  # psycopg2's default cursor again
    if reset_state.terminate_only or dbapi_connection.closed:
        return  # being closed, or lost: the server drops the transaction
    # An error here (a dead connection) makes SQLAlchemy invalidate the record.
    if dbapi_connection.get_transaction_status() != IDLE:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("ROLLBACK")
    dbapi_connection.autocommit = False


def begin(connection: Connection) -> bool:
    """Make ``connection``'s next store statement carry ``BEGIN`` (why:
    :mod:`chttp_server.store_dbapi`).

    Returns False, changing nothing, where psycopg2 would send more than a plain
    ``BEGIN`` (an isolation level, read-only or deferrable set on the connection) or
    where the connection is already in autocommit: those keep psycopg2's own transactions.
    """
    fairy = connection.connection
    dbapi_connection = fairy.dbapi_connection
    if (dbapi_connection is None or dbapi_connection.autocommit
            or dbapi_connection.isolation_level is not None
            or dbapi_connection.readonly is not None or dbapi_connection.deferrable is not None):
        return False
    fairy.info[_FUSED_KEY] = True
    dbapi_connection.autocommit = True
    return True


def fused(connection: Connection) -> bool:
    """True while ``connection`` is in a transaction :func:`begin` fused (until check-in)."""
    return bool(connection.connection.info.get(_FUSED_KEY))


def transaction_status(connection: Connection) -> int:
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    return int(dbapi_connection.get_transaction_status())


def opening(connection: Connection, sql: str) -> str:
    """``sql``, preceded by ``BEGIN`` if it opens a fused transaction."""
    if fused(connection) and transaction_status(connection) == IDLE:
        return "BEGIN; " + sql
    return sql


#: ``MessageTransactionEnded`` and the guarded cursor class, made on first use: this
#: module is imported where psycopg2 is not installed.
_GUARD_CLASSES: dict[str, Any] = {}


def _guard_classes() -> dict[str, Any]:
    if not _GUARD_CLASSES:
        import psycopg2
        import psycopg2.extensions

        # psycopg2 has no type stubs here: its classes are Any to mypy.
        class MessageTransactionEnded(psycopg2.ProgrammingError):  # type: ignore[misc]
            """A statement refused, unsent: the message's transaction was ended by the
            handler, and in driver autocommit it would have committed on its own."""

        # As above: a subclass of an untyped base.
        class GuardedCursor(psycopg2.extensions.cursor):  # type: ignore[misc]
            """Refuses to run a statement outside a transaction (see :func:`guard`).

            A named (server-side) cursor — SQLAlchemy's ``stream_results`` /
            ``yield_per`` — is declared ``WITH HOLD``: psycopg2 refuses any other in
            driver autocommit, and inside the transaction open on the server a holdable
            cursor reads the same rows (PostgreSQL keeps what is left of it past COMMIT
            only if it is still open then).
            """

            def execute(self, query: Any, vars: Any = None) -> Any:
                if self.connection.get_transaction_status() == IDLE:
                    raise MessageTransactionEnded(_ENDED)
                named: Any = self  # psycopg2's attributes are untyped here
                if named.name is not None and not named.withhold:
                    named.withhold = True  # here: connection.cursor() sets it after __init__
                return super().execute(query, vars)

            def executemany(self, query: Any, vars_list: Any) -> Any:
                if self.connection.get_transaction_status() == IDLE:
                    raise MessageTransactionEnded(_ENDED)
                return super().executemany(query, vars_list)

        _GUARD_CLASSES.update(error=MessageTransactionEnded, cursor=GuardedCursor)
    return _GUARD_CLASSES


_ENDED = ("chttp: the certified request's transaction was ended (COMMIT / ROLLBACK sent "
          "by the handler); this statement would run outside it and was not sent")


def guard(connection: Connection) -> None:
    """Refuse, unsent, every later statement on a fused connection that finds no transaction.

    A fused transaction runs in driver autocommit (:mod:`chttp_server.store_dbapi`). A
    handler that ends it itself (``COMMIT`` / ``ROLLBACK`` / ``END`` sent as SQL) would
    otherwise run each later statement as a transaction of its own, committed at once:
    after a ``ROLLBACK`` those writes would survive without their message, and the retry
    would make them again. The guard makes the connection's cursors check the server's
    transaction status (libpq's local state: no round trip) before each statement and
    raise ``MessageTransactionEnded`` (a ``psycopg2.ProgrammingError``) instead; the
    store's own stored response meets the same refusal and reports it as the claim lost.
    Removed when the connection goes back to the pool (:func:`install`'s listener).
    """
    dbapi_connection = connection.connection.dbapi_connection
    if dbapi_connection is not None:
        dbapi_connection.cursor_factory = _guard_classes()["cursor"]


def ended(error: sa_exc.DBAPIError) -> bool:
    """True if ``error`` is a statement :func:`guard` refused."""
    return bool(_GUARD_CLASSES) and isinstance(error.orig, _GUARD_CLASSES["error"])
