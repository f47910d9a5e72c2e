"""The store going away (docs/protocol.rst §4): the ASGI front end starts anyway, answers
503 + Retry-After without running the view, and serves again when the store returns."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from chttp_server.asgi import CertifiedMiddleware
from chttp_server.testing import PostgresCluster, free_port
from tests.asgi.conftest import as_driver
from tests.asgi.live import UvicornProcess


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this module's own: the tests stop and start it."""
    cluster = PostgresCluster(settings={"fsync": "off"})
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_503_while_the_store_is_down_then_201_when_it_returns(own_cluster: PostgresCluster,
                                                              driver: str) -> None:
    url = as_driver(own_cluster.create_database(f"down_{driver}"), driver)
    runs: list[str] = []

    async def view(request: Request) -> PlainTextResponse:
        runs.append(request.headers["x-message-id"])
        return PlainTextResponse("made", status_code=201)

    own_cluster.stop()
    try:
        # Built while the database is down: nothing is checked before the first request.
        middleware = CertifiedMiddleware(Starlette(routes=[Route("/make", view, methods=["POST"])]),
                                         db_url=url, upgrade_schema=True, retry_after=2)

        async def down() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware),
                                         base_url="http://t") as client:
                return await client.post("/make", headers={"X-Message-ID": "during"})

        refused = asyncio.run(down())
    finally:
        own_cluster.start()
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "2"
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "store-unavailable"
    assert str(own_cluster.port) not in refused.text  # the driver's words go to the log only
    assert runs == []

    async def back() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware),
                                     base_url="http://t") as client:
            answers = [await client.post("/make", headers={"X-Message-ID": "during"}) for _ in range(2)]
        await middleware.engine.dispose()
        return answers

    made, replayed = asyncio.run(back())
    assert made.status_code == 201 and replayed.headers["Idempotent-Replayed"] == "true"
    assert runs == ["during"]


def test_uvicorn_starts_while_the_database_is_down(tmp_path: Path) -> None:
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    marks = tmp_path / "marks"
    marks.mkdir()
    with UvicornProcess("tests.asgi.orders_app:app", {
            "CHTTP_TEST_DB": nowhere, "CHTTP_TEST_MARKS": str(marks), "CHTTP_TEST_CREATE": "0"}) as server:
        refused = httpx.post(f"{server.url}/orders", json={"item": "x"},
                             headers={"X-Message-ID": str(uuid.uuid4())}, timeout=60)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert list(marks.iterdir()) == []  # the view never ran
        assert httpx.get(f"{server.url}/ping", timeout=30).status_code == 200
