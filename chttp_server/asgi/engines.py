"""Async engines for the ASGI front end: the URL people write, the async driver it needs.

``CertifiedMiddleware(app, db_url="postgresql://…")`` or ``"sqlite:///file.db"`` is
written as for the WSGI middleware; the ASGI front end needs an asyncio driver for it:
asyncpg for PostgreSQL, aiosqlite for SQLite (psycopg 3's async mode is used when the
URL names it: ``postgresql+psycopg://``). A URL that names a synchronous driver
(``postgresql+psycopg2://``, ``sqlite+pysqlite://``) is refused: it would block the loop.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chttp_core.db import _configure_sqlite, normalize_url
from chttp_server.errors import ConfigurationError

__all__ = ["async_url", "make_async_engine", "sync_journal_url"]

#: The driver used for a URL that names only the database.
_DEFAULT_ASYNC_DRIVER = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}
#: Drivers that speak asyncio, per backend.
_ASYNC_DRIVERS = {"postgresql": {"asyncpg", "psycopg", "psycopg_async"},
                  "sqlite": {"aiosqlite"}}

#: asyncpg's connect timeout, in seconds (libpq's connect_timeout of chttp_core.db).
_ASYNCPG_CONNECT_TIMEOUT = 5


def async_url(url: str | URL) -> URL:
    """``url`` with an asyncio driver: the default one when the URL names none."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    if backend not in _ASYNC_DRIVERS:
        raise ConfigurationError(
            f"the ASGI front end stores messages in PostgreSQL or SQLite, not {backend!r}")
    if "+" not in parsed.drivername:
        return parsed.set(drivername=f"{backend}+{_DEFAULT_ASYNC_DRIVER[backend]}")
    if parsed.get_driver_name() not in _ASYNC_DRIVERS[backend]:
        raise ConfigurationError(
            f"{parsed.drivername!r} is a synchronous driver; the ASGI front end needs an "
            f"asyncio one ({', '.join(sorted(_ASYNC_DRIVERS[backend]))}), e.g. "
            f"{backend}+{_DEFAULT_ASYNC_DRIVER[backend]}://")
    return parsed


def make_async_engine(url: str | URL, *, sqlite_busy_timeout: float = 5.0,
                      **engine_options: Any) -> AsyncEngine:
    """An ``AsyncEngine`` for a chttp store, with :mod:`chttp_core.db`'s dialect settings.

    SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` (the claim is serialised);
    asyncpg a bounded connect timeout. No pre-ping: the claim, a transaction's first
    statement, is retried once on a fresh connection instead
    (:meth:`~chttp_server.transaction.MessageTransaction.claim`).
    """
    parsed = async_url(url)
    connect_args = dict(engine_options.pop("connect_args", {}))
    if parsed.get_backend_name() == "sqlite":
        connect_args.setdefault("timeout", sqlite_busy_timeout)
        engine = create_async_engine(parsed, connect_args=connect_args, **engine_options)
        _configure_sqlite(engine.sync_engine)
        return engine
    if parsed.get_driver_name() == "asyncpg":
        connect_args.setdefault("timeout", _ASYNCPG_CONNECT_TIMEOUT)
    return create_async_engine(parsed, connect_args=connect_args, **engine_options)


def sync_journal_url(engine: AsyncEngine) -> URL | None:
    """The URL of the same PostgreSQL database through the synchronous driver, for the
    journal of views' certified sends; ``None`` for SQLite (the file is locked by the
    message's transaction: a journal needs a file of its own)."""
    url = engine.url
    if url.get_backend_name() != "postgresql":
        return None
    return normalize_url(url.set(drivername="postgresql"))
