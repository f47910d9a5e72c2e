"""A read-only connection to one database holding the chttp tables.

The console is an operator's window onto live stores, so reading must never get in the
way of the traffic it watches, nor change anything by accident:

* It does not use :func:`chttp_core.db.make_engine`'s engine: that one begins every
  SQLite transaction with ``BEGIN IMMEDIATE`` (the write lock), which a page refresh
  would take from the receiver's claims. Here SQLite reads in deferred transactions
  (with WAL, a reader never blocks the writer) under ``PRAGMA query_only``.
* On PostgreSQL each session is ``READ ONLY`` and has a ``statement_timeout``, so a
  count over a large table is cut short instead of piling up behind refreshes.
* A SQLite URL must name an existing file: opening a mistyped path would otherwise
  create an empty database and show an empty store, which looks like data loss.

Writes (the opt-in actions of :mod:`chttp_server.console.actions`) use an engine of
their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL

from chttp_core.db import normalize_url
from chttp_server.errors import ConfigurationError

__all__ = ["ConsoleDatabase", "DEFAULT_STATEMENT_TIMEOUT"]

#: Seconds a console query may run on PostgreSQL before the server cancels it.
DEFAULT_STATEMENT_TIMEOUT = 10.0


class ConsoleDatabase:
    """Read-only access to the ``chttp_*`` tables of one database (see the module docstring)."""

    def __init__(self, url: str | URL, *,
                 statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT) -> None:
        self.url = normalize_url(url)
        #: The URL without its password: safe to show on every page.
        self.label = self.url.render_as_string(hide_password=True)
        self.engine = _read_only_engine(self.url, statement_timeout)

    def __repr__(self) -> str:
        return f"<ConsoleDatabase {self.label}>"

    def connect(self) -> Connection:
        return self.engine.connect()

    def check_schema(self) -> None:
        """Raise :class:`~chttp_core.errors.SchemaOutOfDateError` unless the tables are at head.

        The console reads columns by name, so a database behind the code (or without
        the tables at all) is refused up front with the command that fixes it.
        """
        from chttp_core import migrate   # Alembic loads only when a console starts

        migrate.check_schema(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def _read_only_engine(url: URL, statement_timeout: float) -> Engine:
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise ConfigurationError(
                f"the console reads an existing SQLite file, not {url.render_as_string()!r}")
        if not Path(database).is_file():
            raise ConfigurationError(f"no SQLite database at {database}")
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_read_only(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only = ON")
            cursor.close()

        return engine
    if backend == "postgresql":
        engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        milliseconds = max(1, int(statement_timeout * 1000))

        @event.listens_for(engine, "connect")
        def _postgresql_read_only(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cursor.execute(f"SET statement_timeout = {milliseconds}")
            cursor.close()
            # psycopg2 opened a transaction for the SETs; end it so the pool starts clean.
            dbapi_connection.commit()

        return engine
    raise ConfigurationError(
        f"the console reads SQLite or PostgreSQL stores, not {backend!r} ({url.render_as_string()})")
