"""Fixtures of the ASGI front end's tests: an async URL per driver, a uvicorn server."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.asgi.live import UvicornProcess

#: The drivers the ASGI front end is tested on, and the URL scheme of each.
DRIVERS = {
    "aiosqlite": "sqlite+aiosqlite",
    "asyncpg": "postgresql+asyncpg",
    "psycopg": "postgresql+psycopg",
}


def as_driver(url: str, driver: str) -> str:
    return make_url(url).set(drivername=DRIVERS[driver]).render_as_string(hide_password=False)


@pytest.fixture(params=[pytest.param(name, id=name) for name in DRIVERS])
def async_db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database through each async driver in turn."""
    if request.param == "aiosqlite":
        return as_driver(request.getfixturevalue("sqlite_url"), "aiosqlite")
    return as_driver(request.getfixturevalue("pg_url"), request.param)


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    directory = tmp_path / "marks"
    directory.mkdir()
    return directory


@pytest.fixture
def orders_server(async_db_url: str, marks: Path) -> Callable[..., UvicornProcess]:
    """Start ``tests/asgi/orders_app.py`` under uvicorn (each call a new process on the
    same database); every process started is killed at the end of the test."""
    started: list[UvicornProcess] = []

    def start(**env: str) -> UvicornProcess:
        server = UvicornProcess("tests.asgi.orders_app:app", {
            "CHTTP_TEST_DB": async_db_url, "CHTTP_TEST_MARKS": str(marks), **env})
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        server.__exit__(None, None, None)


@pytest.fixture
def server(orders_server: Callable[..., UvicornProcess]) -> Iterator[UvicornProcess]:
    yield orders_server()
