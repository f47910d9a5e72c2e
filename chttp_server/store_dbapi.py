"""The store's hot statements on PostgreSQL + psycopg2 (and psycopg 3 under Django), sent
straight to the DB-API cursor.

Why: every certified request runs two store statements (the claim, the stored
response). Through SQLAlchemy's execution context each costs ~50 µs of Python
(compiled-cache lookup, parameter processing, result metadata) for SQL that never
changes; on a CPU-bound two-core server that was a third of what a certified request
cost beyond the application's own work (issue 12, ``python -m bench.profile``).

The statements still run on the SQLAlchemy :class:`~sqlalchemy.Connection`'s own
DB-API connection, inside the one transaction of the message (psycopg2's, or the
store's own: below), so the claim, the handler's writes and
the stored response still commit as one (docs/protocol.rst §2). A driver error is
wrapped as SQLAlchemy would have wrapped it (:meth:`sqlalchemy.exc.DBAPIError.instance`),
and a lost connection is invalidated first, so the store's one classification of errors
(:func:`chttp_server.store.unreachable_as_store_error`) and the claim's retry on a
fresh connection see exactly what they see on the portable path.

**Prepared statements.** In the store's own transactions the claim and the stored
response are always server-side prepared statements, prepared together on demand by
each server session that lacks them (:func:`claim`: safe behind a transaction-mode
pooler; the response's ``EXECUTE`` runs in the claim's transaction, hence its session). With ``prepared_statements=True``
(``MessageStore`` / ``CertifiedMiddleware``; off by default) the claim and the stored
response are prepared once per pooled connection, in every mode: for direct connections
only, since a pooler in transaction mode (PgBouncer) moves sessions between clients.

**Fewer round trips in a transaction of the store's own**
(:func:`~chttp_server.fused_transaction.begin`, the WSGI
middleware's and the Flask extension's mode; on a connection a front end lends, only
as below): psycopg2 sends ``BEGIN`` as a round trip of its own before the first
statement and ``COMMIT`` as another after the last, so a certified request cost five
round trips (BEGIN, claim, the handler's insert, the stored response, COMMIT) against a
bare application's three. Here the DB-API connection is switched to autocommit for the
message's transaction and the store says ``BEGIN`` and ``COMMIT`` itself, each in the
same query string as its neighbour: ``BEGIN; <claim>`` and ``<stored response>;
COMMIT``. The handler's statements run in between, inside that one server-side
transaction (psycopg2 adds nothing in autocommit), so the guarantee is unchanged: the
claim, the handler's writes and the response commit as one. Everything that ends such
a transaction goes through :func:`end` (``COMMIT`` / ``ROLLBACK`` when the server is
still in it); a connection handed back to the pool any other way is rolled back and
switched back by a pool ``reset`` listener
(:func:`~chttp_server.fused_transaction.install`), so an open transaction
never reaches the next user of a pooled connection. A handler that ends the transaction
itself (``connection.commit()`` / ``rollback()``, a no-op on the server in autocommit) is
caught by :class:`~chttp_server.transaction.MessageTransaction` before anything is stored.

**psycopg 3, on a connection a front end lends** (Django's, which picks psycopg 3 when
it is installed): the same statements run on a ``psycopg.ClientCursor`` of that
connection (client-side binding, like psycopg2's: ``%(name)s`` parameters, ``EXECUTE``
of a prepared statement, several statements in one query string; the row read is the
last statement's), whatever cursor class the connection makes by default. Such a
transaction is the front end's; but where the front end asks for it (``commit=True``:
Django's outermost ``atomic``, :mod:`chttp_server.django.middleware`) ``COMMIT``
travels with the stored response, or with a replay's hold (:func:`hold`), as in a fused
transaction: psycopg 3 reads the transaction status the server reports, so the front
end's own ``commit()`` that follows finds the connection idle and sends nothing
(psycopg2 keeps a status of its own and would send a second COMMIT: not there). In
that same outermost block of a certified request the front end lends the connection
for a fused transaction (:func:`~chttp_server.fused_transaction.lend`): psycopg 3 goes
to driver autocommit, ``BEGIN`` travels with the claim, the view's statements are
guarded (:func:`~chttp_server.fused_transaction.guard`; on psycopg2, which keeps the
front end's transactions, the guard alone), and the connection is given back as the front end left it before
its ``atomic`` ends: three round trips for a one-insert view instead of four, two for a
replay instead of four. (An earlier attempt, a psycopg 3 *pipeline* carrying psycopg's
own ``BEGIN`` with the claim, measured slower: 506 against 378 µs a claim.) Where the front end's
transaction is already open (Django's ``TestCase``), nothing of this applies.

**asyncpg** (the ASGI front end's usual driver): the claim, the stored response and the
lookup run on the cursor of SQLAlchemy's asyncpg adapter (its BEGIN, its per-connection
prepared statements, its translation of asyncpg's errors), as :data:`NUMBERED`: the
same text with ``$n::type`` parameters. Skipping SQLAlchemy's execution layer there
saved ~3,800 of a certified FastAPI request's ~25,700 bytecodes and ~120 of its
~1,630 µs of CPU (``python -m bench.asgi_profile``, issue 20). Nothing travels together
on asyncpg (one statement per round trip), so nothing of the fused transaction applies.
psycopg 3's asyncio adapter takes the statements as they are, the same way (~230 of a
certified request's ~2,100 µs).

SQLAlchemy's ``before_cursor_execute`` / ``after_cursor_execute`` listeners are called
as SQLAlchemy calls them (without an execution context; a ``retval=True`` listener's
rewrite is not applied). psycopg 3's asyncio adapter runs the statements above as
they are, one at a time (server-side binding: nothing travels together there either).
SQLite keeps the SQLAlchemy statements of :mod:`chttp_server.store`.
"""

from __future__ import annotations

import hashlib
import operator
from collections import namedtuple
from typing import Any, Callable

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from chttp_server.fused_transaction import (
    FUSED_KEY,
    IDLE,
    PAIRED_KEY,
    fused,
    guard,
    guards,
    opening,
    transaction_status,
)
from chttp_server.replication import HOLD_SQL

__all__ = ["supports", "prepares", "fuses", "end", "claim", "complete", "lookup", "hold", "CLAIM",
           "CLAIMING", "COMPLETE", "LOOKUP", "NUMBERED", "NO_SUCH_STATEMENT", "CLAIM_PREPARE",
           "CLAIM_EXECUTE", "COMPLETE_PREPARE", "COMPLETE_EXECUTE"]

_COLUMNS = ("scope", "message_id", "fingerprint", "state", "status", "headers", "body",
            "received_at", "expires_at")
_SELECT_STORED = ", ".join(f"stored.{name}" for name in _COLUMNS)

#: The claim of :data:`chttp_server.store_sql.PG_CLAIM`, word for word, in psycopg2's
#: parameter style and with the stored row's columns named (their order is the tuple's).
CLAIM = (
    "WITH claim AS ("
    "INSERT INTO chttp_messages (scope, message_id, fingerprint, state, received_at, "
    "expires_at) "
    "SELECT %(scope)s, %(message_id)s, %(fingerprint)s, %(state)s, %(received_at)s, "
    "%(expires_at)s "
    "FROM (SELECT set_config('lock_timeout', %(lock_timeout)s || left(set_config("
    "'chttp.saved_lock_timeout', current_setting('lock_timeout'), true), 0), true)"
    ") AS bounded_wait "
    "ON CONFLICT (scope, message_id) DO NOTHING "
    "RETURNING set_config('lock_timeout', current_setting('chttp.saved_lock_timeout'), true)"
    ") "
    f"SELECT (SELECT count(*) FROM claim) AS claimed, {_SELECT_STORED} "
    "FROM (SELECT 1) AS one LEFT JOIN chttp_messages AS stored "
    "ON stored.scope = %(scope)s AND stored.message_id = %(message_id)s"
)

#: True in the transaction that claimed, an error (SQLSTATE 22012) in any other: see
#: :data:`chttp_server.claim_guard.PG_CLAIMING`, which is this text.
CLAIMING = "1 / length(coalesce(current_setting('chttp.saved_lock_timeout', true), '')) >= 0"

COMPLETE = (
    "UPDATE chttp_messages SET status = %(status)s, headers = %(headers)s, body = %(body)s "
    f"WHERE scope = %(scope)s AND message_id = %(message_id)s AND {CLAIMING}"
)

LOOKUP = (
    f"SELECT {', '.join(_COLUMNS)} FROM chttp_messages "
    "WHERE scope = %(scope)s AND message_id = %(message_id)s"
)


def _prepared(kind: str, sql: str, parameters: tuple[tuple[str, str], ...],
              *, paired: str = "") -> tuple[str, str]:
    """``(PREPARE …, EXECUTE …)`` of ``sql`` whose ``%(name)s`` become ``$n`` of the given types.

    The statement's name carries a digest of its text (and of ``paired``, a statement
    always prepared with it): a server session (which a pooler may hand to any client)
    that has a statement of this name has this very statement — and its pair —
    whichever version of this package prepared it.
    """
    body = sql
    for number, (parameter, _type) in enumerate(parameters, start=1):
        body = body.replace(f"%({parameter})s", f"${number}")
    types = ", ".join(sql_type for _name, sql_type in parameters)
    arguments = ", ".join(f"%({parameter})s" for parameter, _type in parameters)
    name = f"chttp_{kind}_{hashlib.sha256(f'{types}|{body}{paired}'.encode()).hexdigest()[:16]}"
    return f"PREPARE {name} ({types}) AS {body}", f"EXECUTE {name} ({arguments})"


#: Each statement's parameters and their PostgreSQL types, in the order they are numbered.
_COMPLETE_PARAMETERS = (
    ("status", "integer"), ("headers", "text"), ("body", "bytea"), ("scope", "text"),
    ("message_id", "text"),
)
_CLAIM_PARAMETERS = (
    ("scope", "text"), ("message_id", "text"), ("fingerprint", "text"), ("state", "text"),
    ("received_at", "timestamptz"), ("expires_at", "timestamptz"), ("lock_timeout", "text"),
)
_LOOKUP_PARAMETERS = (("scope", "text"), ("message_id", "text"))

#: The claim and the stored response as server-side prepared statements: PostgreSQL then
#: neither parses nor plans them per request (planning the claim cost ~0.1-0.2 ms of the
#: server's CPU, more than running it; planning the response's UPDATE ~45 µs, a tenth of
#: the certified transaction's server CPU, issue 20). With ``prepared_statements=True``
#: both are prepared once per pooled connection; in the store's own transactions both
#: are prepared on demand by every server session that lacks them (:func:`claim`), the
#: claim's name a digest of both texts: a session that has it has the response's too.
COMPLETE_PREPARE, COMPLETE_EXECUTE = _prepared("complete", COMPLETE, _COMPLETE_PARAMETERS)
CLAIM_PREPARE, CLAIM_EXECUTE = _prepared("claim", CLAIM, _CLAIM_PARAMETERS,
                                         paired=COMPLETE_PREPARE)


def _numbered(sql: str, parameters: tuple[tuple[str, str], ...]
              ) -> tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]:
    """``sql`` for asyncpg (numbered parameters), and what makes its arguments of a
    parameter dict (in the order they are numbered).

    Each ``%(name)s`` becomes ``$n::type``: asyncpg has the server infer a parameter's
    type, and in the claim's ``INSERT … SELECT`` list it would infer ``text`` for the
    timestamps.
    """
    for number, (parameter, sql_type) in enumerate(parameters, start=1):
        sql = sql.replace(f"%({parameter})s", f"${number}::{sql_type}")
    return sql, operator.itemgetter(*(name for name, _type in parameters))


#: The statements as asyncpg runs them (SQLAlchemy's ``numeric_dollar`` parameter style),
#: keyed by their text above: :func:`_run` swaps one for the other.
NUMBERED = {sql: _numbered(sql, parameters) for sql, parameters in (
    (CLAIM, _CLAIM_PARAMETERS), (COMPLETE, _COMPLETE_PARAMETERS), (LOOKUP, _LOOKUP_PARAMETERS))}

#: Where a pooled connection remembers what it has prepared: its pool record's ``info``,
#: which SQLAlchemy's own pools keep exactly as long as the DB-API connection (a
#: reconnect is a new record and prepares again). See :func:`prepares`.
_PREPARED_KEY = "chttp_prepared_statements"

#: Rows of :data:`CLAIM` and of :data:`LOOKUP`, with the attribute names of a SQLAlchemy row.
_ClaimRow = namedtuple("_ClaimRow", ("claimed", *_COLUMNS))  # type: ignore[misc]
_StoredRow = namedtuple("_StoredRow", _COLUMNS)  # type: ignore[misc]


def supports(engine: Engine) -> bool:
    """True where the statements above run as they are: PostgreSQL through psycopg2, or
    through psycopg 3 on a pool of a front end's connections (module docstring), or on
    the cursor of SQLAlchemy's asyncio adapter of asyncpg (as :data:`NUMBERED`) or of
    psycopg 3."""
    dialect = engine.dialect
    if dialect.name != "postgresql":
        return False
    driver = dialect.driver
    return (driver in ("psycopg2", "asyncpg")
            or (driver == "psycopg" and (dialect.is_async or not _sqlalchemy_pool(engine))))


def prepares(engine: Engine) -> bool:
    """True if the statements can be prepared once per connection on this engine.

    Only on pools whose records live as long as their connections: SQLAlchemy's own,
    and a pool that says so (``keeps_records = True``, as the Django front end's pool
    does). A pool that hands one session out through fresh records would meet
    "already exists" on the second ``PREPARE``; there the literal statements run.
    Never through an asyncio adapter: asyncpg prepares every statement itself
    (SQLAlchemy's adapter keeps them per connection), psycopg 3 does after a few
    executions, and neither binds the arguments of an ``EXECUTE`` on the client.
    """
    if engine.dialect.is_async:
        return False
    return _sqlalchemy_pool(engine) or bool(getattr(engine.pool, "keeps_records", False))


def fuses(engine: Engine) -> bool:
    """True if the store may run its own transactions as
    :func:`~chttp_server.fused_transaction.begin` describes: psycopg2 on SQLAlchemy's own
    pools, whose check-in ``reset`` event :func:`~chttp_server.fused_transaction.install`
    relies on."""
    return engine.dialect.driver == "psycopg2" and _sqlalchemy_pool(engine)


def _sqlalchemy_pool(engine: Engine) -> bool:
    return type(engine.pool).__module__.startswith("sqlalchemy.")


def end(connection: Connection, statement: str) -> bool:
    """``COMMIT`` or ``ROLLBACK`` a fused transaction if the server is still in one.
    True if the connection is fused (whether or not anything was left to end).

    On a connection that is not fused this does nothing: SQLAlchemy's own
    ``commit()`` / ``rollback()`` (which the caller runs next either way) does it.
    """
    info = connection.connection.info
    info.pop(PAIRED_KEY, None)
    if not info.get(FUSED_KEY):
        return False
    if transaction_status(connection) != IDLE:
        _run(connection, statement, None, fetch=False)
    return True


#: SQLSTATE invalid_sql_statement_name: EXECUTE of a statement this session lacks.
NO_SUCH_STATEMENT = "26000"


def claim(connection: Connection, params: dict[str, Any], *, prepared: bool) -> Any:
    """Run :data:`CLAIM`; its one row (``claimed`` and the stored columns by name).

    A fused transaction that claimed, and one on a connection a front end lent
    (:func:`~chttp_server.fused_transaction.lend`), is guarded from here on
    (:func:`~chttp_server.fused_transaction.guard`).
    """
    row: Any   # a _ClaimRow (its fields are untyped to mypy)
    info = connection.connection.info
    is_fused = bool(info.get(FUSED_KEY))
    opens = is_fused and transaction_status(connection) == IDLE  # BEGIN goes with it
    if opens and not prepared:
        row = _ClaimRow._make(_claim_prepared_on_demand(connection, params))
        info[PAIRED_KEY] = True
    else:
        if prepared:
            _prepare(connection, CLAIM_PREPARE)
        sql = CLAIM_EXECUTE if prepared else CLAIM
        row = _ClaimRow._make(_run(connection, "BEGIN; " + sql if opens else sql, params,
                                   fetch=True))
    if row.claimed and (is_fused or guards(connection)):
        guard(connection)
    return row


def _claim_prepared_on_demand(connection: Connection, params: dict[str, Any]) -> Any:
    """``BEGIN; EXECUTE <claim>``, preparing it and the stored response first where this
    session lacks them.

    Safe behind a transaction-mode pooler, where each transaction may run in another
    server session: a session without the statement fails the ``EXECUTE`` (SQLSTATE
    26000) inside the transaction just begun, which keeps that session ours (a pooler
    does not move a client in a transaction), and the retry rolls back, prepares and
    claims in one query string, on that same session. Once every session has it, each
    claim is one round trip again; on a direct connection it is prepared once.
    """
    try:
        return _run(connection, "BEGIN; " + CLAIM_EXECUTE, params, fetch=True)
    except sa_exc.DBAPIError as error:
        original = error.orig  # psycopg2 names the SQLSTATE pgcode, psycopg 3 sqlstate
        if (getattr(original, "pgcode", None) or getattr(original, "sqlstate", None)) \
                != NO_SUCH_STATEMENT:
            raise
    return _run(connection, f"ROLLBACK; {CLAIM_PREPARE}; {COMPLETE_PREPARE}; BEGIN; "
                f"{CLAIM_EXECUTE}", params, fetch=True)


def complete(connection: Connection, params: dict[str, Any], *, prepared: bool,
             commit: bool = False) -> None:
    """Run :data:`COMPLETE` (params: scope, message_id, status, headers, body).

    ``commit``: on a fused connection, or on psycopg 3 (module docstring), ``COMMIT``
    travels in the same round trip (the caller then runs :func:`end` / SQLAlchemy's or
    the front end's commit, which find nothing left to do). After a claim prepared on
    demand (:func:`claim`) the prepared statement runs: that session has it.
    """
    if prepared:
        _prepare(connection, COMPLETE_PREPARE)
        sql = COMPLETE_EXECUTE
    elif connection.connection.info.get(PAIRED_KEY):
        sql = COMPLETE_EXECUTE
    else:
        sql = COMPLETE
    if commit and (fused(connection) or _psycopg3(connection)):
        sql += "; COMMIT"
    _run(connection, sql, params, fetch=False)


def hold(connection: Connection, *, commit: bool) -> bool:
    """Run :data:`chttp_server.replication.HOLD_SQL`; with ``commit``, on a fused connection
    or on psycopg 3 (module docstring), ``COMMIT`` travels with it. True if it did (the
    front end's commit that follows then finds nothing left to do)."""
    with_commit = commit and (fused(connection) or _psycopg3(connection))
    _run(connection, f"{HOLD_SQL}; COMMIT" if with_commit else HOLD_SQL, None, fetch=False)
    return with_commit


def _prepare(connection: Connection, prepare: str) -> None:
    """Prepare once per connection (``PREPARE`` survives a rollback)."""
    info = connection.connection.info
    done: set[str] | None = info.get(_PREPARED_KEY)
    if done is None:
        done = info[_PREPARED_KEY] = set()
    if prepare not in done:
        _run(connection, prepare, None, fetch=False)
        done.add(prepare)


def lookup(connection: Connection, scope: str, message_id: str) -> Any | None:
    """The stored row (columns by name), or ``None``."""
    found = _run(connection, opening(connection, LOOKUP),
                 {"scope": scope, "message_id": message_id}, fetch=True)
    return _StoredRow._make(found) if found is not None else None


def _run(connection: Connection, sql: str, params: dict[str, Any] | None, *, fetch: bool) -> Any:
    """Run ``sql`` on the DB-API cursor: its one row (``fetch``) or its row count."""
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    dialect = connection.dialect
    dbapi = dialect.loaded_dbapi
    arguments: Any = params
    if params is not None and dialect.paramstyle == "numeric_dollar":  # asyncpg
        sql, arguments_of = NUMBERED[sql]
        arguments = arguments_of(params)
    psycopg3 = dialect.driver == "psycopg" and not dialect.is_async  # under Django
    cursor = _client_cursor(dbapi_connection) if psycopg3 else dbapi_connection.cursor()
    try:
        # SQLAlchemy's cursor events still see the statement (tracing, the fault tests'
        # injected kills). The flags are SQLAlchemy's own test before every event
        # point: reading ``connection.dispatch`` builds a per-connection dispatcher
        # (~15 µs a request), so it is only read when a listener exists.
        events = connection._has_events or connection.engine._has_events
        if events and connection.dispatch.before_cursor_execute:
            for listener in connection.dispatch.before_cursor_execute:
                listener(connection, cursor, sql, arguments, None, False)
        cursor.execute(sql, arguments)
        if fetch and psycopg3:
            # psycopg 3 stands on the first statement's result ("BEGIN"); the row is the last's.
            while cursor.nextset():
                pass
        result = cursor.fetchone() if fetch else cursor.rowcount
        if events and connection.dispatch.after_cursor_execute:
            for listener in connection.dispatch.after_cursor_execute:
                listener(connection, cursor, sql, arguments, None, False)
        return result
    except dbapi.Error as error:
        if dialect.is_disconnect(error, dbapi_connection, cursor):
            _fail_through_sqlalchemy(connection, error)
        raise sa_exc.DBAPIError.instance(sql, arguments, error, dbapi.Error,
                                         dialect=dialect) from error
    finally:
        cursor.close()


def _psycopg3(connection: Connection) -> bool:
    """psycopg 3 on a connection a front end lent (Django's): not its asyncio adapter,
    whose statements run one at a time with server-side binding."""
    dialect = connection.dialect
    return dialect.driver == "psycopg" and not dialect.is_async


def _client_cursor(dbapi_connection: Any) -> Any:
    """A client-side-binding cursor of a psycopg 3 connection (module docstring)."""
    import psycopg

    return psycopg.ClientCursor(dbapi_connection)


def _fail_through_sqlalchemy(connection: Connection, error: Exception) -> None:
    """Let SQLAlchemy meet the lost connection itself, so it does what it always does.

    A statement through SQLAlchemy on the dead connection fails again, and SQLAlchemy
    then invalidates this connection and every connection pooled before now (so the
    claim's one retry really gets a fresh one), and raises the ``DBAPIError`` marked
    ``connection_invalidated``, which is raised here. Only on this failure path.
    """
    try:
        connection.exec_driver_sql("SELECT 1")
    except sa_exc.DBAPIError as lost:
        raise lost from error
