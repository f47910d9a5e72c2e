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

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

__all__ = [
    "normalize_url", "make_engine", "configure_sqlite", "is_sqlite", "is_postgresql",
    "is_disconnect",
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
    """Give an engine made elsewhere (a Flask-SQLAlchemy ``db.engine``) the settings above.

    Idempotent. Connections already pooled were opened without them, so the pool is
    disposed: every connection from now on gets WAL and ``BEGIN IMMEDIATE``.
    """
    if engine.dialect.name != "sqlite" or engine in _CONFIGURED:
        return
    _configure_sqlite(engine)
    engine.dispose()


#: Engines that already have the listeners (adding them twice would BEGIN twice).
_CONFIGURED: weakref.WeakSet[Engine] = weakref.WeakSet()


def _configure_sqlite(engine: Engine) -> None:
    """Take transaction control away from pysqlite and begin with ``BEGIN IMMEDIATE``.

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
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def is_disconnect(error: BaseException) -> bool:
    """True if ``error`` means the store could not be reached (rather than a bad query)."""
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        return isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError))
    return isinstance(error, (sa_exc.DisconnectionError, sa_exc.TimeoutError))
