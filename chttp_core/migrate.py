"""Schema migrations for every ``chttp_`` table, from code and from the command line.

The Alembic scripts ship inside the wheel as ``chttp_core.migrations`` (the top-level
``migrations/`` folder, mapped by ``package_dir``) and are found with
:mod:`importlib.resources`, so they work from a checkout, an editable install and a
wheel alike. The lineage keeps its own version table, :data:`VERSION_TABLE`, so a host
application's ``alembic_version`` is never read or written.
"""

from __future__ import annotations

from contextlib import contextmanager
from importlib.resources import as_file, files
from typing import Any, Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from chttp_core.db import make_engine
from chttp_core.errors import SchemaOutOfDateError

__all__ = [
    "VERSION_TABLE",
    "UPGRADE_COMMAND",
    "upgrade",
    "current_revision",
    "head_revision",
    "check_schema",
    "include_object",
]

VERSION_TABLE = "chttp_alembic_version"
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

    A connection that is already inside a transaction is left for its owner to commit,
    so the upgrade can join a host application's own migration transaction.
    """
    with _connection(target) as connection:
        caller_transaction = connection.in_transaction()
        with _config() as config:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        if not caller_transaction and connection.in_transaction():
            connection.commit()


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
