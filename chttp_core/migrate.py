"""Schema migrations for every ``chttp_`` table, from code and from the command line.

The Alembic scripts ship inside the wheel as ``chttp_core.migrations`` (the top-level
``migrations/`` folder, mapped by ``package_dir``) and are found with
:mod:`importlib.resources`, so they work from a checkout, an editable install and a
wheel alike. The lineage keeps its own version table, :data:`VERSION_TABLE`, so a host
application's ``alembic_version`` is never read or written.

Several processes often start at once on one fresh database (the replicas of a service,
gunicorn workers, a journal in each): :func:`upgrade` serialises them, so the first one
migrates and the others find the schema at head (see :func:`upgrade`).
"""

from __future__ import annotations

from contextlib import contextmanager
from importlib.resources import as_file, files
from typing import Any, Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import URL

from chttp_core.db import is_postgresql, make_engine
from chttp_core.errors import ForeignSchemaError, SchemaOutOfDateError

__all__ = [
    "VERSION_TABLE",
    "UPGRADE_LOCK_KEY",
    "UPGRADE_COMMAND",
    "upgrade",
    "current_revision",
    "head_revision",
    "check_schema",
    "include_object",
]

VERSION_TABLE = "chttp_alembic_version"
#: The PostgreSQL advisory-lock key every chttp schema upgrade takes (a fixed 64-bit
#: number: the first eight bytes of SHA-256 of "chttp_alembic_version", signed).
#: Advisory locks are per database, so upgrades of different databases never wait.
UPGRADE_LOCK_KEY = 0x1ACB_5834_E95D_BE2A
#: The command a user runs to bring a database up to date; named in every schema error.
UPGRADE_COMMAND = "chttp-server db upgrade --db URL"


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Compare only our own tables: a host's tables in the same database are not ours."""
    if type_ == "table":
        return name is not None and name.startswith("chttp_") and name != VERSION_TABLE
    return True


@contextmanager
def _config() -> Iterator[Config]:
    with as_file(files("chttp_core.migrations")) as script_location:
        config = Config()
        config.set_main_option("script_location", str(script_location))
        yield config


def head_revision() -> str:
    """The newest revision this code ships."""
    with _config() as config:
        head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


@contextmanager
def _connection(target: str | URL | Engine | Connection) -> Iterator[Connection]:
    if isinstance(target, Connection):
        yield target
        return
    engine = target if isinstance(target, Engine) else make_engine(target)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        if not isinstance(target, Engine):
            engine.dispose()


def upgrade(target: str | URL | Engine | Connection, revision: str = "head") -> None:
    """Upgrade the chttp tables at ``target`` (a URL, engine or connection) to ``revision``.

    The whole upgrade is one transaction that first takes a lock every other upgrade of
    the same database also takes, so processes starting at once never race to create the
    version table or a table (issue 15: 18 of 30 concurrent starts failed with
    ``UniqueViolation`` / ``DuplicateTable`` on PostgreSQL):

    * PostgreSQL: ``pg_advisory_xact_lock(UPGRADE_LOCK_KEY)``, held until the commit.
      Alembic reads the version only after it (each statement of a READ COMMITTED
      transaction sees every earlier commit), so a process that waited finds the
      schema at head and changes nothing.
    * SQLite: the engines of :func:`~chttp_core.db.make_engine` begin every
      transaction with ``BEGIN IMMEDIATE``, which takes the database's write lock up
      front; the version is likewise read after it. (An engine made elsewhere, without
      that setting, is not serialised.)

    A connection that is already inside a transaction is left for its owner to commit,
    so the upgrade can join a host application's own migration transaction; the lock is
    then held until that commit.

    :class:`~chttp_core.errors.ForeignSchemaError` if, under the lock, the database has
    ``chttp_`` tables but no chttp version: they are not ours to upgrade. (Checked under
    the lock because a concurrent first upgrade's tables look exactly like that to
    anyone who reads the version and the table list outside it.)
    """
    with _connection(target) as connection:
        caller_transaction = connection.in_transaction()
        if not caller_transaction:
            connection.begin()
        try:
            _lock_for_upgrade(connection)
            _refuse_foreign_tables(connection)
            with _config() as config:
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
            if not caller_transaction:
                connection.commit()
        except BaseException:
            if not caller_transaction and connection.in_transaction():
                connection.rollback()
            raise


def _refuse_foreign_tables(connection: Connection) -> None:
    """Raise :class:`ForeignSchemaError` for ``chttp_`` tables without a chttp version."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    if context.get_current_revision() is not None:
        return
    ours = sorted(name for name in inspect(connection).get_table_names()
                  if name.startswith("chttp_") and name != VERSION_TABLE)
    if ours:
        raise ForeignSchemaError(ours)


def _lock_for_upgrade(connection: Connection) -> None:
    """Serialise schema upgrades of one database across processes (see :func:`upgrade`)."""
    if is_postgresql(connection.engine):
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK_KEY})
    # SQLite: the BEGIN IMMEDIATE of make_engine's engines already holds the write lock.


def current_revision(target: str | URL | Engine | Connection) -> str | None:
    """The revision the database at ``target`` is at, ``None`` if never migrated."""
    with _connection(target) as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        )
        revision = context.get_current_revision()
        if connection.in_transaction() and not isinstance(target, Connection):
            connection.rollback()
        return revision


def check_schema(target: str | URL | Engine | Connection) -> None:
    """Raise :class:`SchemaOutOfDateError` unless the database is at this code's head."""
    current = current_revision(target)
    head = head_revision()
    if current != head:
        raise SchemaOutOfDateError(current=current, head=head, command=UPGRADE_COMMAND)
