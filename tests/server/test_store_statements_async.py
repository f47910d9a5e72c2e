"""The store's statements through SQLAlchemy's asyncio adapters give the answers
SQLAlchemy's statements give.

On asyncpg and on psycopg 3's asyncio adapter the claim, the stored response and the
lookup go straight to the adapter's cursor (asyncpg: chttp_server.store_dbapi.NUMBERED,
the psycopg2 text with numbered, typed parameters; psycopg: that text as it is),
skipping SQLAlchemy's execution layer as psycopg2's do. Each test runs both paths on
both drivers against the real PostgreSQL, in a greenlet as the ASGI front end runs the
store (chttp_server.async_transaction).
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any, Callable

import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.util import greenlet_spawn

from chttp_core.db import make_engine
from chttp_core.migrate import upgrade
from chttp_server import store_dbapi
from chttp_server.store import MessageKey, MessageStore
from tests.asgi.conftest import as_driver
from tests.server.test_store_statements import (
    claim_complete_and_replay,
    claim_held_by_another_transaction_times_out,
)

PATHS = pytest.mark.parametrize("dbapi_statements", [True, False], ids=["adapter-cursor", "sqlalchemy"])
DRIVERS = pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])


def in_greenlet(pg_url: str, driver: str, dbapi_statements: bool,
                steps: Callable[[MessageStore], Any]) -> Any:
    """``steps(store)`` on an async engine's store, in a greenlet on an event loop."""
    schema = make_engine(pg_url)
    upgrade(schema)
    schema.dispose()

    async def scenario() -> Any:
        engine = create_async_engine(as_driver(pg_url, driver))
        store = MessageStore(engine.sync_engine, retention=timedelta(days=1), claim_timeout=0.2,
                             dbapi_statements=dbapi_statements)
        assert store_dbapi.supports(engine.sync_engine)
        try:
            return await greenlet_spawn(steps, store)
        finally:
            await engine.dispose()

    return asyncio.run(scenario())


@DRIVERS
@PATHS
def test_claim_complete_and_replay(pg_url, driver, dbapi_statements):
    key = MessageKey("alice", f"m-{dbapi_statements}")
    in_greenlet(pg_url, driver, dbapi_statements,
                lambda store: claim_complete_and_replay(store, key))


@DRIVERS
@PATHS
def test_a_claim_held_by_another_transaction_times_out(pg_url, driver, dbapi_statements):
    in_greenlet(pg_url, driver, dbapi_statements, claim_held_by_another_transaction_times_out)


def test_the_numbered_statements_are_the_psycopg2_ones_renumbered():
    """Same SQL: put each ``$n::type`` back as the name it numbers and the psycopg2 text
    comes back, character for character."""
    for sql, (numbered, arguments_of) in store_dbapi.NUMBERED.items():
        assert "%(" not in numbered
        names = re.findall(r"%\((\w+)\)s", sql)
        order = arguments_of({name: name for name in names})  # the names, in $n order
        restored = re.sub(r"\$(\d+)::[a-z]+", lambda m: f"%({order[int(m[1]) - 1]})s", numbered)
        assert restored == sql
        assert set(order) == set(names)
