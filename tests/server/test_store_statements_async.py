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
from chttp_core.errors import ClaimTimedOut
from chttp_core.migrate import upgrade
from chttp_server import store_dbapi
from chttp_server.store import MessageKey, MessageStore, utcnow
from tests.asgi.conftest import as_driver

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
    now = utcnow()

    def steps(store: MessageStore) -> None:
        connection = store.begin()
        try:
            assert store.claim(connection, key, "f" * 64, now) is None
            store.complete(connection, key, 201, [("Content-Type", "text/plain")], b"\x00body")
            store.commit(connection)
        finally:
            connection.close()
        connection = store.begin()
        try:
            stored = store.claim(connection, key, "f" * 64, utcnow())
            assert stored is not None
            assert (stored.status, stored.headers, stored.body) == \
                (201, [("Content-Type", "text/plain")], b"\x00body")
            assert stored.fingerprint == "f" * 64 and stored.key == key
            assert stored.received_at == now and stored.expires_at == now + timedelta(days=1)
            assert store.lookup(connection, key) == stored
            assert store.lookup(connection, MessageKey("alice", "unknown")) is None
            store.rollback(connection)
        finally:
            connection.close()

    in_greenlet(pg_url, driver, dbapi_statements, steps)


@DRIVERS
@PATHS
def test_a_claim_held_by_another_transaction_times_out(pg_url, driver, dbapi_statements):
    key = MessageKey("", "held")

    def steps(store: MessageStore) -> None:
        holder = store.begin()
        waiter = store.begin()
        try:
            assert store.claim(holder, key, "a" * 64, utcnow()) is None
            with pytest.raises(ClaimTimedOut):  # lock_timeout's SQLSTATE, through the adapter
                store.claim(waiter, key, "a" * 64, utcnow())
        finally:
            store.rollback(waiter)
            store.rollback(holder)
            waiter.close()
            holder.close()

    in_greenlet(pg_url, driver, dbapi_statements, steps)


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
