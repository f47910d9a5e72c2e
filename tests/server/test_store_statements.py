"""The store's two ways to run its statements on PostgreSQL give the same answers.

psycopg2 runs the claim, the stored response and the lookup on the DB-API cursor
(chttp_server.store_dbapi, issue 12); every other driver runs SQLAlchemy statements.
Both paths run here against the real PostgreSQL fixture, so the portable one stays
tested even though the bench never takes it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from chttp_core.db import make_engine
from chttp_core.errors import ClaimTimedOut
from chttp_core.migrate import upgrade
from chttp_server.store import MessageKey, MessageStore, utcnow


@pytest.fixture
def engine(pg_url):
    engine = make_engine(pg_url, pool_pre_ping=False)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("dbapi_statements", [True, False], ids=["dbapi", "sqlalchemy"])
def test_claim_complete_and_replay(engine, dbapi_statements):
    store = MessageStore(engine, retention=timedelta(days=1), claim_timeout=0.5,
                         dbapi_statements=dbapi_statements)
    key = MessageKey("alice", f"m-{dbapi_statements}")
    now = utcnow()
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


@pytest.mark.parametrize("dbapi_statements", [True, False], ids=["dbapi", "sqlalchemy"])
def test_a_claim_held_by_another_transaction_times_out(engine, dbapi_statements):
    store = MessageStore(engine, retention=timedelta(days=1), claim_timeout=0.2,
                         dbapi_statements=dbapi_statements)
    key = MessageKey("", "held")
    holder = store.begin()
    waiter = store.begin()
    try:
        assert store.claim(holder, key, "a" * 64, utcnow()) is None
        with pytest.raises(ClaimTimedOut):
            store.claim(waiter, key, "a" * 64, utcnow())
    finally:
        store.rollback(waiter)
        store.rollback(holder)
        waiter.close()
        holder.close()
