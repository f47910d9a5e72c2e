"""Shared fixtures: a real PostgreSQL started by the test session, and SQLite files.

Every store-backed test takes ``db_url`` and so runs twice, once per database
(``[sqlite]`` and ``[postgresql]``). Each test gets a database of its own.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from chttp_server.testing import PostgresCluster

_database_numbers = itertools.count(1)
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(settings={"fsync": "off", "full_page_writes": "off"})
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """A fresh, empty PostgreSQL database."""
    return pg_cluster.create_database(f"test_{next(_database_numbers)}")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'chttp.db'}"


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")])
def db_url(request) -> str:
    """A fresh, empty database of each kind in turn."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """The project's wheel, built once per session from a copy of the tree.

    Building from a copy keeps build/ and egg-info debris out of the working tree.
    """
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".pytest_cache",
        ".venv", "*.db", "*.db-*"))
    out = base / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = out.glob("certified_http-*.whl")
    return wheel
