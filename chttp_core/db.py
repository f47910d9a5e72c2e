"""Engines for the stores both halves keep: URL normalisation and per-dialect settings.

Users write database URLs the way their tools print them (``postgresql://…``,
``sqlite:///file.db``). SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which
this project does not depend on; we pin it to psycopg2. SQLite is the embedded default
and needs three settings to behave like a real transactional store under several
threads and processes: WAL (readers never block the writer), a busy timeout (a writer
waits for the lock instead of failing at once) and ``BEGIN IMMEDIATE`` (a transaction
takes the write lock up front, so two transactions can never deadlock upgrading a
read lock, and a claim is serialised exactly like PostgreSQL's row lock).
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

__all__ = [
    "normalize_url", "make_engine", "configure_sqlite", "begin_immediately", "is_sqlite",
    "is_postgresql", "is_disconnect",
]

#: How long a SQLite writer waits for the database lock, in seconds.
SQLITE_BUSY_TIMEOUT = 5.0


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
    return create_engine(parsed, **engine_options)


def configure_sqlite(engine: Engine) -> None:
    """Make an engine made elsewhere (a Flask-SQLAlchemy ``db.engine``) fit to hold a store.

    It gets WAL and SQLAlchemy's control of transactions (so savepoints work), but its
    transactions keep SQLite's default ``BEGIN`` (deferred): the application's own
    readers must not queue for the write lock. Only the connections the message store
    begins ask for ``BEGIN IMMEDIATE``, through :func:`begin_immediately`. Foreign keys
    are left as the application set them. Idempotent; connections already pooled were
    opened without these settings, so the pool is disposed.
    """
    if engine.dialect.name != "sqlite" or engine in _CONFIGURED:
        return
    _configure_sqlite(engine, begin="DEFERRED", foreign_keys=False)
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
            cursor.execute("PRAGMA journal_mode=WAL")
        if foreign_keys:
            cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, begin)
        connection.exec_driver_sql(f"BEGIN {mode}")


def is_disconnect(error: BaseException) -> bool:
    """True if ``error`` means the store could not be reached (rather than a bad query)."""
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        return isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError))
    return isinstance(error, (sa_exc.DisconnectionError, sa_exc.TimeoutError))
