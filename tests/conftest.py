"""Shared fixtures: a real PostgreSQL started by the test session, and SQLite files.

Every store-backed test takes ``db_url`` and so runs twice, once per database
(``[sqlite]`` and ``[postgresql]``). Each test gets a database of its own.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import pytest

from chttp_server.testing import PostgresCluster

_database_numbers = itertools.count(1)


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
