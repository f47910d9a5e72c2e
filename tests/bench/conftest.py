"""Fixtures of the bench's tests."""

from __future__ import annotations

from typing import Iterator

import pytest
from sqlalchemy import Engine, text

from bench.cluster import ITEMS_DDL
from chttp_core.db import make_engine
from chttp_core.migrate import upgrade


@pytest.fixture
def items_database(pg_url: str) -> Iterator[tuple[str, Engine]]:
    """The test cluster's database with the chttp schema and the bench's ``bench_items``
    table, as the bench makes them: its URL and an engine on it."""
    upgrade(pg_url)
    engine = make_engine(pg_url)
    with engine.begin() as connection:
        connection.execute(text(ITEMS_DDL))
    yield pg_url, engine
    engine.dispose()
