"""The store's size per message, measured with real rows on PostgreSQL (docs/scale.rst).

It measures 5,000 messages and the million that docs/scale.rst quotes (about 40 s
here); both are in the default run, so CI measures them; ``python -m pytest -m scale``
runs the million alone and prints the figures.
"""

from __future__ import annotations

import psycopg2
import pytest
from chttp_examples.multihost.size import measure
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.slow


def _stored_bytes(url: str) -> float:
    """The average size of what a row holds (its column values), from PostgreSQL itself."""
    parsed = make_url(url)
    connection = psycopg2.connect(host=parsed.host, port=parsed.port, user=parsed.username,
                                  dbname=parsed.database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT avg(pg_column_size(m.*)) FROM chttp_messages AS m")
            return float(cursor.fetchone()[0])
    finally:
        connection.close()


def _check(url: str, messages: int) -> None:
    full, tombstones, _seconds = measure(url, messages)
    print(f"\nstored responses: {full.per_million()}\nacknowledged: {tombstones.per_million()}")
    assert full.rows == tombstones.rows == messages
    assert full.indexes > 0
    # The table cannot be smaller than the values in it (tombstones now, after the ack).
    assert full.heap > tombstones.heap >= messages * _stored_bytes(url)
    assert tombstones.total < full.total


def test_store_size_of_thousands_of_messages(pg_url):
    _check(pg_url, 5_000)


@pytest.mark.scale
def test_store_size_of_a_million_messages(pg_url):
    _check(pg_url, 1_000_000)
