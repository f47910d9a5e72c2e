"""Alembic environment for the chttp tables.

It runs against a connection handed in by :mod:`chttp_core.migrate` (``config.attributes
["connection"]``) or a URL (``sqlalchemy.url``). The version table is
``chttp_alembic_version`` and only ``chttp_*`` tables are compared, so this lineage lives
beside a host application's own Alembic lineage in the same database without touching it.
"""

from __future__ import annotations

from alembic import context

from chttp_core.db import make_engine
from chttp_core.migrate import VERSION_TABLE, include_object
from chttp_core.schema import metadata

config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
