"""The store's own transaction on psycopg2 (and Django's outermost one on psycopg 3),
``BEGIN`` and ``COMMIT`` fused with its statements: switching the connection in and out
of driver autocommit, and guarding it.

:mod:`chttp_server.store_dbapi` says why (five round trips become three) and sends the
statements; this module holds the connection's side of it: :func:`begin` marks a pooled
connection as running a fused transaction and switches it to autocommit (:func:`lend`
does the same for the psycopg 3 connection Django lends, and gives it back as Django
expects it), :func:`fused` and :func:`transaction_status` tell where it stands,
:func:`opening` puts ``BEGIN`` in front of the statement that opens it,
:func:`install`'s pool listener ends whatever a connection still has open when it goes
back to the pool, and :func:`guard` refuses, unsent, any statement a handler would run
after ending the transaction itself (in autocommit it would commit on its own).
"""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

__all__ = ["install", "begin", "lend", "guards", "fused", "transaction_status", "opening", "guard",
           "ended", "IDLE", "FUSED_KEY", "PAIRED_KEY"]


#: Where a pooled connection records that the store switched it to autocommit for a
#: transaction of its own (:func:`begin`); its pool record's ``info``, read on check-in.
FUSED_KEY = "chttp_fused_transaction"
#: Where a connection :func:`lend` lent is marked, and keeps the cursor class it had
#: before :func:`guard`.
_LENT_KEY = "chttp_lent_transaction"
_FACTORY_KEY = "chttp_fused_cursor_factory"
#: Set by :func:`chttp_server.store_dbapi.claim` while the open transaction claimed through
#: the claim prepared on demand (its session has the stored response prepared too); set
#: only while :data:`FUSED_KEY` is, and dropped with it (here) and at the transaction's
#: end (:func:`chttp_server.store_dbapi.end`).
PAIRED_KEY = "chttp_claim_prepared_on_demand"
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
    if record is None or not record.info.pop(FUSED_KEY, False):
        return
    record.info.pop(PAIRED_KEY, None)
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
    fairy.info[FUSED_KEY] = True
    dbapi_connection.autocommit = True
    return True


def lend(connection: Connection) -> Callable[[], None] | None:
    """:func:`begin` for the psycopg 3 connection of Django's outermost ``atomic`` block
    (the :func:`guard` alone on psycopg2); the function that gives the connection back,
    or None (nothing changed).

    Django's ``atomic`` switched psycopg 3 out of autocommit, so psycopg would send
    ``BEGIN`` as a round trip of its own before the claim; here the connection goes back
    to driver autocommit while Django still believes it is in its transaction (Django's
    ``get_autocommit()``, ``in_atomic_block`` and savepoints read Django's own state),
    and the claim says ``BEGIN`` itself. psycopg 3's ``commit()`` / ``rollback()`` act
    on the transaction status the server reports (nothing is sent when it is idle), so
    Django's own commit or rollback at the end of ``atomic`` ends whatever is open.

    Only where psycopg would send a plain ``BEGIN`` (no isolation level, read-only or
    deferrable set), the server is idle and psycopg is out of autocommit (Django's
    outermost block). The function returned must run before ``atomic`` is left, on
    every path: it removes the guard's cursor class (:func:`guard`), forgets the marks
    (the pool record of Django's connection outlives the request), and switches psycopg
    out of autocommit again where the server is idle, so Django's exit finds exactly
    the connection it left; where a transaction is still open (an error on the way)
    psycopg stays in autocommit, which Django's rollback and its ``set_autocommit(True)``
    that follows handle as always.

    psycopg2 keeps its transactions (its ``commit()`` trusts a status of its own, not
    the server's: ``COMMIT`` cannot travel with the response there), but it needs the
    guard all the same: after a view's own ``COMMIT`` psycopg2 still believes it is in
    a transaction and sends the view's next write without ``BEGIN``, which the server
    then commits on its own.
    """
    driver = connection.dialect.driver
    if driver not in ("psycopg", "psycopg2"):
        return None
    fairy = connection.connection
    raw = fairy.dbapi_connection
    if raw is None or raw.closed or raw.autocommit or transaction_status(connection) != IDLE:
        return None
    psycopg3 = driver == "psycopg"
    fuses = psycopg3 and (raw.isolation_level is None and raw.read_only is None
                          and raw.deferrable is None)
    info = fairy.info
    info[_LENT_KEY] = True
    if fuses:
        raw.autocommit = True
        info[FUSED_KEY] = True

    def give_back() -> None:
        info.pop(_LENT_KEY, None)
        info.pop(FUSED_KEY, None)
        info.pop(PAIRED_KEY, None)
        if _FACTORY_KEY in info:
            raw.cursor_factory = info.pop(_FACTORY_KEY)
        if fuses and not raw.closed and raw.pgconn.transaction_status == IDLE:
            raw.autocommit = False

    return give_back


def guards(connection: Connection) -> bool:
    """True if a claim on ``connection`` must be followed by :func:`guard`: a fused
    transaction, or a connection :func:`lend` lent."""
    info = connection.connection.info
    return bool(info.get(FUSED_KEY) or info.get(_LENT_KEY))


def fused(connection: Connection) -> bool:
    """True while ``connection`` is in a transaction :func:`begin` fused (until check-in)."""
    return bool(connection.connection.info.get(FUSED_KEY))


def transaction_status(connection: Connection) -> int:
    """The server's transaction status as libpq last saw it (no round trip)."""
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    if connection.dialect.driver == "psycopg":
        return int(dbapi_connection.pgconn.transaction_status)
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
    if "cursor" not in _GUARD_CLASSES:
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
    Removed when the connection goes back to the pool (:func:`install`'s listener), or
    by the function :func:`lend` returned on a connection it lent.

    psycopg 3 (a connection :func:`lend` lent): the connection's own cursor class
    (Django's) is wrapped by a subclass that checks first; its error is a
    ``psycopg.ProgrammingError`` (Django's ``ProgrammingError`` in a view). Cursors
    made without the connection's factory (a named, server-side one: only a ``SELECT``
    can be declared) are not guarded.
    """
    fairy = connection.connection
    dbapi_connection = fairy.dbapi_connection
    if dbapi_connection is None:
        return
    factory = dbapi_connection.cursor_factory
    if fairy.info.get(_LENT_KEY):
        fairy.info.setdefault(_FACTORY_KEY, factory)  # the lender gives it back
    if connection.dialect.driver == "psycopg":
        dbapi_connection.cursor_factory = _psycopg_guarded(factory)
    else:
        dbapi_connection.cursor_factory = _guard_classes()["cursor"]


#: psycopg 3: the guarded subclass of each cursor class met, and the refusal's error.
_PSYCOPG_GUARDED: dict[Any, Any] = {}


def _psycopg_ended() -> Any:
    error = _GUARD_CLASSES.get("psycopg_error")
    if error is None:
        import psycopg

        # Made on first use (psycopg may be absent); its classes are Any to mypy here.
        class MessageTransactionEnded(psycopg.ProgrammingError):  # type: ignore[misc]
            """A statement refused, unsent: the message's transaction was ended by the
            view, and in driver autocommit it would have committed on its own."""

        error = _GUARD_CLASSES["psycopg_error"] = MessageTransactionEnded
    return error


def _psycopg_guarded(base: Any) -> Any:
    """``base`` (a psycopg 3 cursor class), refusing statements while the server is idle."""
    guarded = _PSYCOPG_GUARDED.get(base)
    if guarded is not None:
        return guarded
    refusal = _psycopg_ended()

    def check(cursor: Any) -> None:
        if cursor.connection.pgconn.transaction_status == IDLE:
            raise refusal(_ENDED)

    def execute(self: Any, query: Any, params: Any = None, **options: Any) -> Any:
        check(self)
        return base.execute(self, query, params, **options)

    def executemany(self: Any, query: Any, params_seq: Any, **options: Any) -> Any:
        check(self)
        return base.executemany(self, query, params_seq, **options)

    def stream(self: Any, query: Any, params: Any = None, **options: Any) -> Any:
        check(self)
        return base.stream(self, query, params, **options)

    def copy(self: Any, statement: Any, params: Any = None, **options: Any) -> Any:
        check(self)
        return base.copy(self, statement, params, **options)

    guarded = type(f"Guarded{base.__name__}", (base,), {
        "__doc__": f"{base.__name__} refusing any statement outside a transaction (guard).",
        "execute": execute, "executemany": executemany, "stream": stream, "copy": copy,
    })
    _PSYCOPG_GUARDED[base] = guarded
    return guarded


def ended(error: sa_exc.DBAPIError) -> bool:
    """True if ``error`` is a statement :func:`guard` refused."""
    refused = tuple(_GUARD_CLASSES[name] for name in ("error", "psycopg_error")
                    if name in _GUARD_CLASSES)
    return bool(refused) and isinstance(error.orig, refused)
