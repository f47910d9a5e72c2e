"""The bench's FastAPI app (bench/fastapi_app.py) does what its rows claim, on asyncpg.

Driven in process through ``bench.asgi_profile.drive`` (the ASGI callable, as uvicorn
calls it) on the test cluster; the assertions are on what the database holds, never on
a rate: bare writes one row per request, the floor two, certified one row and one
stored message, and a retry of a certified request writes nothing more.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from bench.asgi_profile import drive
from bench.fastapi_app import MODES, make_app


def _counts(engine) -> tuple[int, int]:
    with engine.connect() as connection:
        items = connection.execute(text("SELECT count(*) FROM bench_items")).scalar_one()
        stored = connection.execute(text(
            "SELECT count(*) FROM chttp_messages WHERE status = 201")).scalar_one()
    return items, stored


@pytest.mark.parametrize(("mode", "items", "stored"), [
    pytest.param("fastapi-bare", 3, 0, id="bare"),
    pytest.param("fastapi-floor", 8, 0, id="floor"),  # two rows each, no replay
    pytest.param("fastapi-certified", 3, 3, id="certified"),
])
def test_each_mode_writes_what_its_row_stands_for(items_database, mode, items, stored):
    url, engine = items_database
    ids = [None] * 3 if mode == "fastapi-bare" else ["m-1", "m-2", "m-3", "m-1"]

    async def run() -> int:
        app = make_app(mode, url, pool_size=2)
        try:
            count, _wall, _cpu = await drive(app, ids)
        finally:
            await _dispose(app)
        return count

    assert asyncio.run(run()) == len(ids)
    assert _counts(engine) == (items, stored)  # certified: the retry of m-1 wrote nothing


async def _dispose(app) -> None:
    from bench.asgi_profile import _engines

    for engine in _engines({"app": app}).values():
        await engine.dispose()


def test_the_modes_are_the_rows_the_bench_runs():
    from bench.scenarios import FASTAPI_MODES

    assert set(MODES) == set(FASTAPI_MODES)
