"""Is the transaction open on the message's connection still the one that claimed it?

The transaction belongs to the message (docs/protocol.rst §2): the claim, the handler's
writes and the stored response commit as one. A handler can still end it — through the
connection's ``commit()`` / ``rollback()``, or by sending ``COMMIT`` / ``ROLLBACK`` /
``END`` as SQL (Django's ``cursor.execute``, Flask's ``db.session.execute(text(…))``).
Storing the response afterwards would store it in another transaction than the claim's:
after a raw ``COMMIT`` the claim would already be durable without its response (every
retry a bare 500 until the expiry, issue 23), after a ``ROLLBACK`` the response would be
sent as stored while nothing was. This module is how the store knows, at no extra round
trip:

* **PostgreSQL**: the claim sets a transaction-local setting (``chttp.saved_lock_timeout``,
  :data:`chttp_server.store_sql.PG_CLAIM`), which reads ``''`` in any later transaction.
  The stored response's UPDATE carries :data:`PG_CLAIMING`, which divides by its length:
  SQLSTATE 22012 anywhere but in the claiming transaction (:func:`claim_lost`).
* **SQLite** (no transaction-local settings): the claim sets a savepoint
  (:func:`mark_sqlite`) that :func:`release_sqlite` releases before storing; a
  transaction ended by anyone took it along.
* **Statements after the end**: where the driver runs the message in autocommit
  (psycopg2's fused transaction, :mod:`chttp_server.store_dbapi`; SQLite under
  ``BEGIN IMMEDIATE``, :mod:`chttp_core.db`), each statement a handler sends after ending
  the transaction would commit on its own — after a ``ROLLBACK`` without its message,
  and again on the retry. They are refused before they are sent: psycopg2's by
  :func:`chttp_server.fused_transaction.guard`, SQLite's by :func:`install_sqlite`'s listener
  (the driver's local transaction state, no round trip). :func:`refused_as_ended` tells
  such a refusal from any other error. Drivers that keep their own transactions
  (psycopg 3, Django's connections) run them in a new transaction, which the refusal
  rolls back.

The store raises :class:`~chttp_core.errors.ClaimLost`; the message transaction turns it
into :class:`~chttp_server.errors.HandlerEndedTransaction` (nothing stored). A
PostgreSQL procedure that commits cannot run inside the message's transaction block at
all ("invalid transaction termination").

:func:`lost` answers the neighbouring question — is the connection known to be dead? —
from the same local state, for the receiver's one mapping of store errors
(:func:`chttp_server.transaction.store_errors`).
"""

from __future__ import annotations

import sqlite3
import weakref
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from chttp_core.errors import ClaimLost
from chttp_server import fused_transaction, store_dbapi

__all__ = ["PG_CLAIMING", "sqlstate", "claim_lost", "mark_sqlite", "release_sqlite",
           "install_sqlite", "end", "refused_as_ended", "lost"]

#: The stored response's guard on PostgreSQL: true in the transaction that claimed, a
#: ``division_by_zero`` error (SQLSTATE 22012) in any other — after the handler ended the
#: claim's transaction the next statement runs in a new transaction (or none, in
#: autocommit) where the claim's transaction-local setting reads ``''`` (or NULL on a
#: session that never claimed, as behind a pooler). An error rather than "0 rows": where
#: ``COMMIT`` travels in the same query string (chttp_server.store_dbapi) the UPDATE's row
#: count is never seen, and the error stops the rest of the string. It costs no round
#: trip and no statement: without a column in it, the server evaluates it once per
#: execution (a one-time filter; ~5 µs of planning and execution, measured), and nothing
#: else in the UPDATE divides. The text lives in store_dbapi, whose UPDATE carries it too.
PG_CLAIMING = store_dbapi.CLAIMING
#: SQLSTATE division_by_zero: :data:`PG_CLAIMING` found another transaction.
_PG_NOT_CLAIMING = "22012"

#: The SAVEPOINT that marks the claiming transaction on SQLite.
_SQLITE_CLAIM_SAVEPOINT = "chttp_claim"
#: SQLite connections whose transaction claimed a message that is not yet stored or
#: rolled back: their statements are checked by :func:`_refuse_outside_the_claim`.
_SQLITE_CLAIMED: weakref.WeakSet[Connection] = weakref.WeakSet()
_SQLITE_GUARD_INSTALLED = "chttp_sqlite_guard_installed"
_ENDED = ("chttp: the certified request's transaction was ended (COMMIT / ROLLBACK sent "
          "by the handler); this statement would run outside it and was not sent")


class _SQLiteTransactionEnded(sqlite3.ProgrammingError):
    """A statement refused, unsent: it would have run outside the message's transaction."""


def sqlstate(error: sa_exc.DBAPIError) -> str | None:
    """The SQLSTATE of a PostgreSQL driver's error: psycopg2's ``pgcode``, psycopg 3's and
    asyncpg's ``sqlstate`` (SQLAlchemy's asyncpg adapter sets both)."""
    original = error.orig
    code = getattr(original, "pgcode", None) or getattr(original, "sqlstate", None)
    return str(code) if code else None


def claim_lost(error: sa_exc.DBAPIError) -> bool:
    """True if the stored response's statement failed because the claim's transaction is gone.

    Also when its prepared statement is missing (SQLSTATE 26000): the claim prepares it
    with itself (:func:`chttp_server.store_dbapi.claim`), so a session without it — one a
    pooler handed over after the handler sent ``COMMIT; BEGIN`` — is not the claim's.
    """
    state = sqlstate(error)
    return (state == _PG_NOT_CLAIMING or refused_as_ended(error)
            or (state == store_dbapi.NO_SUCH_STATEMENT
                and str(error.statement).startswith(store_dbapi.COMPLETE_EXECUTE)))


def mark_sqlite(connection: Connection) -> None:
    """SQLite, right after a claim: mark this transaction as the claiming one."""
    connection.exec_driver_sql(f"SAVEPOINT {_SQLITE_CLAIM_SAVEPOINT}")
    _SQLITE_CLAIMED.add(connection)


def release_sqlite(connection: Connection, message_id: str) -> None:
    """SQLite, before storing: release the claim's savepoint, or raise :class:`ClaimLost`."""
    try:
        connection.exec_driver_sql(f"RELEASE {_SQLITE_CLAIM_SAVEPOINT}")
    except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
        if "no such savepoint" in str(exc.orig) or refused_as_ended(exc):
            raise ClaimLost(message_id, "the claim's savepoint is gone") from exc
        raise


def end(connection: Connection) -> None:
    """The message claimed on ``connection`` is stored or being rolled back: unguard it."""
    if _SQLITE_CLAIMED:  # empty but on SQLite: skip the weak reference discard() makes
        _SQLITE_CLAIMED.discard(connection)


def install_sqlite(engine: Engine) -> None:
    """Give a SQLite store's engine the listener that refuses statements after the end (once)."""
    from sqlalchemy import event

    if not getattr(engine, _SQLITE_GUARD_INSTALLED, False):
        event.listen(engine, "before_cursor_execute", _refuse_outside_the_claim)
        setattr(engine, _SQLITE_GUARD_INSTALLED, True)


def _refuse_outside_the_claim(connection: Connection, cursor: Any, statement: str,
                              parameters: Any, context: Any, executemany: bool) -> None:
    """Before every statement on the engine: none runs outside a claimed transaction.

    A set lookup for connections that claimed nothing (the host application's own).
    """
    if connection in _SQLITE_CLAIMED:
        dbapi_connection: Any = connection.connection.dbapi_connection
        if dbapi_connection is not None and not _sqlite_in_transaction(dbapi_connection):
            raise _SQLiteTransactionEnded(_ENDED)


def _sqlite_in_transaction(dbapi_connection: Any) -> bool:
    """sqlite3's own ``in_transaction``; through SQLAlchemy's aiosqlite adapter, the
    driver connection's (aiosqlite reads its sqlite3 connection's flag: no I/O)."""
    in_transaction = getattr(dbapi_connection, "in_transaction", None)
    if in_transaction is None:
        in_transaction = dbapi_connection.driver_connection.in_transaction
    return bool(in_transaction)


def refused_as_ended(error: sa_exc.DBAPIError) -> bool:
    """True if ``error`` is a statement refused because the transaction was ended."""
    return isinstance(error.orig, _SQLiteTransactionEnded) or fused_transaction.ended(error)


def lost(connection: Connection) -> bool:
    """True if ``connection`` is known to be dead, without a round trip.

    SQLAlchemy invalidated it (a statement met a disconnect), or the driver says its
    connection is closed or broken (psycopg2's ``closed``, psycopg 3's ``broken``,
    asyncpg's ``is_closed()`` behind SQLAlchemy's adapter). A connection closed by its
    user is not "lost": using it afterwards is a bug, not an outage.
    """
    if connection.invalidated:
        return True
    if connection.closed:
        return False
    dbapi_connection: Any = connection.connection.dbapi_connection
    if dbapi_connection is None:
        return True
    closed = getattr(dbapi_connection, "closed", False)
    if (closed and not callable(closed)) or getattr(dbapi_connection, "broken", False) is True:
        return True
    driver = getattr(dbapi_connection, "_connection", None)
    is_closed = getattr(driver, "is_closed", None)
    return bool(callable(is_closed) and is_closed())
