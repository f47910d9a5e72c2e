"""Engines for the stores both halves keep: URL normalisation and per-dialect settings.

Users write database URLs the way their tools print them (``postgresql://…``,
``sqlite:///file.db``). SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which
this project does not depend on; we pin it to psycopg2. SQLite is the embedded default
and needs three settings to behave like a real transactional store under several
threads and processes: WAL (readers never block the writer), a busy timeout (a writer
waits for the lock instead of failing at once) and ``BEGIN IMMEDIATE`` (a transaction
takes the write lock up front, so two transactions can never deadlock upgrading a
read lock, and a claim is serialised exactly like PostgreSQL's row lock).

PostgreSQL engines get bounded network waits (:data:`POSTGRESQL_CONNECT_DEFAULTS`):
without them a store behind a silent partition (packets dropped, no reset) holds a
request for as long as the kernel retransmits — about 15 minutes on Linux — and the
503 store-unavailable a client is owed (docs/protocol.rst §4) never comes.
"""

from __future__ import annotations

import sqlite3
import sys
import time
import weakref
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

__all__ = [
    "normalize_url", "make_engine", "configure_sqlite", "begin_immediately", "is_sqlite",
    "is_postgresql", "is_disconnect", "is_driver_disconnect", "POSTGRESQL_CONNECT_DEFAULTS",
    "postgresql_connect_args",
]

#: How long a SQLite writer waits for the database lock, in seconds.
SQLITE_BUSY_TIMEOUT = 5.0

#: libpq options every PostgreSQL engine made here gets unless the URL's query or the
#: caller's ``connect_args`` name them. ``connect_timeout`` (s) bounds a new connection;
#: ``tcp_user_timeout`` (ms, libpq >= 12) bounds how long data sent (a statement, a
#: pre-ping) may stay unacknowledged; the keepalives find a dead peer on a connection
#: that waits for an answer with nothing left to send. Together: a request whose store
#: went silent is answered 503 after roughly ``tcp_user_timeout + connect_timeout``.
POSTGRESQL_CONNECT_DEFAULTS: dict[str, int] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}

#: The libpq version from which ``tcp_user_timeout`` is a known option.
_TCP_USER_TIMEOUT_SINCE = 120000


def normalize_url(url: str | URL) -> URL:
    """Return ``url`` as a :class:`URL`, a bare ``postgresql`` scheme pinned to psycopg2."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


def is_sqlite(engine_or_url: Engine | URL | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def is_postgresql(engine_or_url: Engine | URL | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "postgresql"


def make_engine(
    url: str | URL, *, sqlite_busy_timeout: float = SQLITE_BUSY_TIMEOUT, **engine_options: Any
) -> Engine:
    """Create an engine for a chttp store, with the dialect settings described above.

    ``sqlite_busy_timeout`` is how long a SQLite writer waits for the lock (seconds).
    A PostgreSQL engine gets ``pool_pre_ping`` and the bounded network waits of
    :data:`POSTGRESQL_CONNECT_DEFAULTS` (see :func:`postgresql_connect_args`); a URL
    query parameter (``?connect_timeout=2``) or ``connect_args={...}`` overrides any.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        connect_args = dict(engine_options.pop("connect_args", {}))
        connect_args.setdefault("timeout", sqlite_busy_timeout)
        connect_args.setdefault("check_same_thread", False)
        engine = create_engine(parsed, connect_args=connect_args, **engine_options)
        _configure_sqlite(engine)
        return engine
    engine_options.setdefault("pool_pre_ping", True)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":
        engine_options["connect_args"] = postgresql_connect_args(
            parsed, engine_options.get("connect_args"))
    return create_engine(parsed, **engine_options)


def postgresql_connect_args(url: URL, connect_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """``connect_args`` with :data:`POSTGRESQL_CONNECT_DEFAULTS` added where nobody chose.

    The URL's own query parameters win over a default (SQLAlchemy would otherwise let
    ``connect_args`` override the URL), and so do the caller's ``connect_args``.
    ``tcp_user_timeout`` is left out when the libpq psycopg2 links is older than 12,
    which would refuse the option.
    """
    chosen = dict(connect_args or {})
    for name, value in POSTGRESQL_CONNECT_DEFAULTS.items():
        if name in url.query or name in chosen:
            continue
        if name == "tcp_user_timeout" and _libpq_version() < _TCP_USER_TIMEOUT_SINCE:
            continue
        chosen[name] = value
    return chosen


def _libpq_version() -> int:
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - no driver: the engine fails on connect anyway
        return 0
    return int(getattr(psycopg2, "__libpq_version__", 0))


def configure_sqlite(engine: Engine, *, dispose: bool = True) -> None:
    """Make an engine made elsewhere (a Flask-SQLAlchemy ``db.engine``) fit to hold a store.

    It gets WAL and SQLAlchemy's control of transactions (so savepoints work), but its
    transactions keep SQLite's default ``BEGIN`` (deferred): the application's own
    readers must not queue for the write lock. Only the connections the message store
    begins ask for ``BEGIN IMMEDIATE``, through :func:`begin_immediately`. Foreign keys
    are left as the application set them. Idempotent; connections already pooled were
    opened without these settings, so the pool is disposed (``dispose=False``: the
    caller does it, e.g. ``await async_engine.dispose()``, which must not run here).
    """
    if engine.dialect.name != "sqlite" or engine in _CONFIGURED:
        return
    _configure_sqlite(engine, begin="DEFERRED", foreign_keys=False)
    if dispose:
        engine.dispose()


def begin_immediately(connection: Connection) -> Connection:
    """Have this connection's next SQLite transaction begin with ``BEGIN IMMEDIATE``.

    A claim must hold the write lock from its first statement (module docstring), on
    every engine configured here. No effect on other databases. Returns ``connection``.
    """
    if connection.dialect.name == "sqlite":
        connection.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
    return connection


#: The execution option that picks how a SQLite transaction begins.
_BEGIN_OPTION = "chttp_sqlite_begin"


#: Engines that already have the listeners (adding them twice would BEGIN twice).
_CONFIGURED: weakref.WeakSet[Engine] = weakref.WeakSet()


def _configure_sqlite(engine: Engine, *, begin: str = "IMMEDIATE", foreign_keys: bool = True) -> None:
    """Take transaction control away from pysqlite and begin with ``BEGIN <begin>``.

    This is SQLAlchemy's documented recipe for a serialisable SQLite ("Serializable
    isolation / Savepoints / Transactional DDL" in the SQLite dialect docs).
    """

    _CONFIGURED.add(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        in_memory = engine.url.database in (None, "", ":memory:")
        if not in_memory:
            _enter_wal(cursor)
        if foreign_keys:
            cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, begin)
        connection.exec_driver_sql(f"BEGIN {mode}")


def _enter_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock.

    The first connections to a new file race to switch it from the rollback journal to
    WAL, and SQLite answers the loser "database is locked" at once, without its busy
    handler: the loser already holds a read lock and waiting for the write lock could
    deadlock. (Found by CI: a sender's journal and a second journal opening one new file
    together. About one race of four new connections in twenty failed.) Once one
    connection has switched, the mode is persistent and the retry is a no-op. Bounded
    by the connection's own busy timeout, the wait the caller chose for the lock.
    """
    cursor.execute("PRAGMA busy_timeout")
    busy_seconds = cursor.fetchone()[0] / 1000
    deadline = time.monotonic() + busy_seconds
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


#: Modules of asyncio drivers whose connect errors SQLAlchemy hands on untranslated.
_ASYNC_DRIVER_MODULES = ("asyncpg", "psycopg", "aiosqlite")

#: SQLSTATEs that mean the server ended or refused the session: class 08 (connection
#: exception) is matched by prefix; admin_shutdown, crash_shutdown, cannot_connect_now,
#: too_many_connections.
_LOST_SQLSTATES = ("57P01", "57P02", "57P03", "53300")


def is_driver_disconnect(error: BaseException) -> bool:
    """True if ``error``, or an error it was raised from, is a lost or refused connection.

    For the errors that reach a receiver *without* SQLAlchemy's classification: a
    driver's own exception (psycopg 3, psycopg2 or asyncpg, raised under Django's ORM,
    or by SQLAlchemy's asyncpg adapter, whose error is raised from asyncpg's), and
    SQLAlchemy's invalidated ``DBAPIError`` somewhere in the chain of a later error
    (``PendingRollbackError`` raised while cleaning up after it). Only modules already
    imported are consulted: nothing is imported here.
    """
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:
        if _one_disconnect(current):
            return True
        seen += 1
        current = current.__cause__ or current.__context__
    return False


def _one_disconnect(error: BaseException) -> bool:
    if isinstance(error, sa_exc.DBAPIError):
        return error.connection_invalidated
    if isinstance(error, sa_exc.DisconnectionError):
        return True
    for name in ("psycopg", "psycopg2"):
        driver = sys.modules.get(name)
        if driver is not None and isinstance(error, (driver.OperationalError, driver.InterfaceError)):
            code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
            # No SQLSTATE: the client library's own "connection is closed / lost".
            return code is None or code.startswith("08") or code in _LOST_SQLSTATES
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None:
        exceptions = asyncpg.exceptions
        if isinstance(error, (exceptions.PostgresConnectionError, exceptions.CannotConnectNowError,
                              exceptions.AdminShutdownError, exceptions.CrashShutdownError,
                              exceptions.TooManyConnectionsError)):
            return True
        if isinstance(error, exceptions.InterfaceError) and "closed" in str(error):
            return True  # "cannot perform operation: connection is closed"
    return False


def is_disconnect(error: BaseException) -> bool:
    """True if ``error`` means the store could not be reached (rather than a bad query).

    Besides SQLAlchemy's own errors: what an asyncio driver raises while *connecting*
    reaches us untranslated (asyncpg's ``ConnectionRefusedError``, ``TimeoutError``,
    "the database system is starting up"), since SQLAlchemy wraps only errors of
    statements on an established connection.
    """
    if isinstance(error, OSError):  # ConnectionRefusedError, socket.gaierror, TimeoutError
        return True
    if type(error).__module__.split(".", 1)[0] in _ASYNC_DRIVER_MODULES:
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        return isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError))
    return isinstance(error, (sa_exc.DisconnectionError, sa_exc.TimeoutError))
