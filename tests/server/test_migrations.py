"""Migrations: one lineage for every ``chttp_`` table, no drift, shipped in the wheel.

DESIGN.md: the models (:data:`chttp_core.schema.metadata`, every table of both halves)
and the Alembic revisions must describe the same schema on both databases, the lineage
keeps its own version table beside a host's ``alembic_version``, and the scripts travel
inside the wheel so ``chttp-server db upgrade`` works from an installed package. The
drift test covers whatever revisions exist: it upgrades to head and compares.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, text

from chttp_core.db import make_engine
from chttp_core.schema import metadata
from chttp_core import migrate
from chttp_core.schema import messages  # noqa: F401  (registers chttp_messages)

from .live import REPO_ROOT

VERSIONS = sorted(p.name for p in (REPO_ROOT / "migrations" / "versions").glob("*.py"))


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def drift(engine, target: MetaData) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={
            "compare_type": True,
            "include_object": migrate.include_object,
            "version_table": migrate.VERSION_TABLE,
        })
        return compare_metadata(context, target)


def test_every_model_table_is_ours():
    assert metadata.tables, "no tables registered on the shared MetaData"
    assert all(name.startswith("chttp_") for name in metadata.tables)
    assert "chttp_messages" in metadata.tables


def test_the_lineage_has_a_single_head_and_every_file_is_a_revision():
    script = ScriptDirectory(str(files("chttp_core.migrations")))
    assert len(script.get_heads()) == 1
    assert script.get_current_head() == migrate.head_revision()
    revisions = list(script.walk_revisions())
    assert len(revisions) == len([v for v in VERSIONS if v != "__init__.py"])
    assert revisions[-1].down_revision is None  # one root


def test_upgrade_on_an_empty_database_creates_every_table(engine):
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    tables = set(inspect(engine).get_table_names())
    assert tables == set(metadata.tables) | {migrate.VERSION_TABLE}
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.check_schema(engine)  # does not raise
    migrate.upgrade(engine)  # idempotent
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_models_and_migrations_do_not_drift(engine):
    migrate.upgrade(engine)
    assert drift(engine, metadata) == []


def test_the_drift_check_would_notice_a_table_missing_from_the_migrations(engine):
    """Guards the guard: include_object must not filter our own tables away."""
    migrate.upgrade(engine)
    extended = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(extended)
    Table("chttp_not_migrated", extended, Column("id", Integer, primary_key=True))
    extended.tables["chttp_messages"].append_column(Column("surprise", String(10)))
    differences = drift(engine, extended)
    assert any(d[0] == "add_table" and d[1].name == "chttp_not_migrated"
               for d in differences if isinstance(d, tuple))
    assert any(d[0] == "add_column" and d[2] == "chttp_messages" and d[3].name == "surprise"
               for d in differences if isinstance(d, tuple))


def test_the_hosts_own_alembic_version_is_untouched(engine):
    with engine.begin() as connection:
        connection.execute(text(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('host_rev_7')"))
        connection.execute(text("CREATE TABLE host_things (id INTEGER PRIMARY KEY)"))
    migrate.upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    assert rows == [("host_rev_7",)]
    assert {"alembic_version", "host_things"} <= set(inspect(engine).get_table_names())
    # The host's tables are not ours: they are neither dropped nor reported as drift.
    assert drift(engine, metadata) == []


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("chttp-server")
    found = str(script) if script.exists() else shutil.which("chttp-server")
    assert found, "the chttp-server console script is not installed (pip install -e .)"
    return [found]


def test_cli_db_upgrade_and_current(db_url):
    upgraded = subprocess.run([*_cli(), "db", "upgrade", "--db", db_url],
                              capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"chttp schema at {migrate.head_revision()}"
    current = subprocess.run([*_cli(), "db", "current", "--db", db_url],
                             capture_output=True, text=True, timeout=120)
    assert current.returncode == 0, current.stderr
    assert current.stdout.strip() == migrate.head_revision()


def test_cli_db_current_on_a_missing_database(sqlite_url, capsys):
    # Issue 10: a read-only command says so and exits non-zero instead of creating the file.
    from chttp_server.cli import main

    assert main(["db", "current", "--db", sqlite_url]) == 2
    assert "no database at" in capsys.readouterr().err
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


@pytest.mark.slow
def test_the_wheel_ships_the_migrations(built_wheel):
    wheel = built_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "chttp_core/migrations/env.py" in names
    assert "chttp_core/migrations/script.py.mako" in names
    for version in VERSIONS:
        assert f"chttp_core/migrations/versions/{version}" in names
    assert "chttp_server/middleware.py" in names
    assert not any(name.startswith("tests/") for name in names)


def test_upgrade_refuses_chttp_tables_it_did_not_make(engine):
    """A foreign ``chttp_messages`` (no chttp version row): refused under the upgrade's
    lock with ForeignSchemaError, and left as it was, from code as from the CLI."""
    from chttp_core.errors import ForeignSchemaError

    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE chttp_messages (note VARCHAR(10))"))
    with pytest.raises(ForeignSchemaError, match="chttp_messages"):
        migrate.upgrade(engine)
    assert migrate.current_revision(engine) is None
    assert [c["name"] for c in inspect(engine).get_columns("chttp_messages")] == ["note"]
