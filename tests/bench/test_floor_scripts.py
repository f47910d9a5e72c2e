"""The bench's SQL-only rows (bench/floor.py) run, and do what the receiver does.

Each script runs for a second through the real ``pgbench`` on the test cluster; the
assertions are on what the database holds afterwards, never on a rate.
"""

from __future__ import annotations

import pytest
from sqlalchemy import make_url, text

from bench.floor import SCRIPTS, pgbench_script


@pytest.fixture
def database(items_database):
    url, engine = items_database
    return make_url(url), engine


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_script_writes_what_its_request_writes(database, name):
    url, engine = database
    result = pgbench_script(name, port=url.port, database=url.database, concurrency=2,
                            duration=1)
    assert result.requests > 0 and result.errors == 0
    with engine.connect() as connection:
        items = connection.execute(text("SELECT count(*) FROM bench_items")).scalar_one()
        stored = connection.execute(text(
            "SELECT count(*), count(*) FILTER (WHERE status = 201 AND body IS NOT NULL) "
            "FROM chttp_messages")).one()
        unmatched = connection.execute(text(
            "SELECT count(*) FROM bench_items i LEFT JOIN chttp_messages m "
            "ON m.message_id = i.message_id WHERE m.message_id IS NULL")).scalar_one()
    assert items == result.requests
    if name in ("certified", "advisory"):
        # One message row per request, each with its stored response, one effect each.
        assert stored == (items, items)
        assert unmatched == 0
    else:
        assert stored == (0, 0)
