"""Schema set-up from many processes at once on fresh databases (issue 15, item 1).

Eight processes per database, on three fresh databases at a time, all reaching the
schema set-up at the same moment (they import first and wait for a "go" file), through
each entry point: the sender's journal (``ensure_schema()`` and ``resume_all()``), the
receiver's ``CertifiedMiddleware(upgrade_schema=True)`` and ``chttp-server db upgrade``.
Every process must start, and each database must end with one schema at head: one row
in the version table and every chttp table. Before :func:`chttp_core.migrate.upgrade`
took a lock, most of the PostgreSQL starts failed with ``UniqueViolation`` on the version
table or ``DuplicateTable``.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from chttp_core import migrate
from chttp_core.db import make_engine
from chttp_core.schema import metadata
from tests.server.live import wait_for

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
DATABASES = 3
PROCESSES_PER_DATABASE = 8
_names = itertools.count(1)


def fresh_databases(kind: str, pg_cluster_getter, tmp_path: Path) -> list[str]:
    if kind == "sqlite":
        return [f"sqlite:///{tmp_path / f'race-{n}.db'}" for n in range(DATABASES)]
    cluster = pg_cluster_getter()
    return [cluster.create_database(f"race_{next(_names)}") for _ in range(DATABASES)]


def start_all_at_once(entries_and_urls: list[tuple[str, str]], go: Path) -> list[tuple[str, str, int, str]]:
    processes = [
        (entry, url, subprocess.Popen(
            [sys.executable, "-m", "tests.core.schema_starter", entry, url, str(go)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for entry, url in entries_and_urls
    ]
    try:
        for _, _, process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        go.touch()
        results = []
        for entry, url, process in processes:
            output, _ = process.communicate(timeout=300)
            results.append((entry, url, process.returncode, output))
        return results
    finally:
        for _, _, process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def assert_one_schema_at_head(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(
                text(f"SELECT version_num FROM {migrate.VERSION_TABLE}")).scalars().all()
            tables = {name for name in inspect(connection).get_table_names()
                      if name.startswith("chttp_")}
        assert versions == [migrate.head_revision()]
        assert tables == set(metadata.tables) | {migrate.VERSION_TABLE}
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("entry_point", [
    pytest.param(("journal-ensure", "journal-resume"), id="journal"),
    pytest.param(("middleware",), id="middleware"),
    pytest.param(("cli",), id="cli-db-upgrade"),
])
def test_many_processes_start_at_once_on_fresh_databases(request, tmp_path, kind, entry_point):
    urls = fresh_databases(kind, lambda: request.getfixturevalue("pg_cluster"), tmp_path)
    entries = itertools.cycle(entry_point)
    launches = [(next(entries), url) for url in urls for _ in range(PROCESSES_PER_DATABASE)]
    results = start_all_at_once(launches, tmp_path / "go")
    failed = [(entry, output) for entry, _, returncode, output in results
              if returncode != 0 or "started" not in output]
    assert not failed, f"{len(failed)} of {len(results)} starts failed; first:\n{failed[0][1]}"
    for url in urls:
        assert_one_schema_at_head(url)


def test_an_upgrade_waits_for_the_lock_another_upgrade_holds(pg_url):
    """The mechanism, deterministically: while another session holds the upgrade lock,
    an upgrade waits (PostgreSQL shows it waiting on that advisory lock) and creates
    nothing; once the lock is released it finishes, and a second one finds head."""
    engine = make_engine(pg_url)
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": migrate.UPGRADE_LOCK_KEY})
            holder.commit()
            done = threading.Event()
            errors: list[BaseException] = []

            def upgrade() -> None:
                try:
                    migrate.upgrade(pg_url)
                except BaseException as error:  # reported by the assertion below
                    errors.append(error)
                finally:
                    done.set()

            worker = threading.Thread(target=upgrade)
            worker.start()

            def waiting_on_the_lock() -> bool:
                count = holder.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND NOT granted AND database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())")).scalar_one()
                holder.commit()
                return bool(count)

            wait_for(waiting_on_the_lock, timeout=60, what="the upgrade to wait on the lock")
            assert not done.is_set()
            assert migrate.current_revision(pg_url) is None
            holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": migrate.UPGRADE_LOCK_KEY})
            holder.commit()
            assert done.wait(60) and not errors, errors
            worker.join(10)
        migrate.upgrade(pg_url)  # already at head: changes nothing, raises nothing
        assert_one_schema_at_head(pg_url)
    finally:
        engine.dispose()
