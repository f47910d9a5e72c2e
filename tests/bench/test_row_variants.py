"""Every variant of bench/row_variants.py runs and stores what the receiver stores.

Each variant's certified script runs for a second through the real ``pgbench`` in a
schema of its own on the test cluster; the assertions are on what the database holds
afterwards (one completed message row per application row), never on a rate.
"""

from __future__ import annotations

import pytest
from sqlalchemy import make_url, text

from bench.row_variants import TABLES, VARIANTS, run_variant
from chttp_core.db import make_engine


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_variant_stores_one_answered_row_per_request(pg_url, name):
    url = make_url(pg_url)
    schema = "v_" + "".join(ch if ch.isalnum() else "_" for ch in name)
    ddl, script = VARIANTS[name]
    engine = make_engine(pg_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}; SET LOCAL search_path = "
                                       f"{schema}; {TABLES} {ddl}")
        count = run_variant(url.port, schema, script, 2, 1, database=url.database)
        with engine.connect() as connection:
            items, answered = connection.execute(text(
                f"SELECT (SELECT count(*) FROM {schema}.bench_items), "
                f"(SELECT count(*) FROM {schema}.chttp_messages m JOIN {schema}.bench_items i "
                "ON i.message_id = m.message_id WHERE m.status = 201)")).one()
    finally:
        engine.dispose()
    assert count > 0
    assert items == answered == count
