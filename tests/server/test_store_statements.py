"""The store's two ways to run its statements on PostgreSQL give the same answers.

psycopg2 runs the claim, the stored response and the lookup on the DB-API cursor
(chttp_server.store_dbapi, issue 12); every other driver runs SQLAlchemy statements.
Both paths run here against the real PostgreSQL fixture, so the portable one stays
tested even though the bench never takes it.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg2
import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import Pool

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


def claim_complete_and_replay(store: MessageStore, key: MessageKey) -> None:
    """Claim, store and commit; then a retry's claim returns the stored row, as a lookup does."""
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


def claim_held_by_another_transaction_times_out(store: MessageStore) -> None:
    """A second claim of a key claimed by an open transaction raises ClaimTimedOut
    (lock_timeout's SQLSTATE) once the store's claim_timeout has passed."""
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


@pytest.mark.parametrize("dbapi_statements", [True, False], ids=["dbapi", "sqlalchemy"])
def test_claim_complete_and_replay(engine, dbapi_statements):
    store = MessageStore(engine, retention=timedelta(days=1), claim_timeout=0.5,
                         dbapi_statements=dbapi_statements)
    claim_complete_and_replay(store, MessageKey("alice", f"m-{dbapi_statements}"))


@pytest.mark.parametrize("dbapi_statements", [True, False], ids=["dbapi", "sqlalchemy"])
def test_a_claim_held_by_another_transaction_times_out(engine, dbapi_statements):
    store = MessageStore(engine, retention=timedelta(days=1), claim_timeout=0.2,
                         dbapi_statements=dbapi_statements)
    claim_held_by_another_transaction_times_out(store)


class _OneSessionPool(Pool):
    """A pool of another package: one session, handed out through fresh records (as the
    Django front end's pool did before it kept one record per Django connection)."""

    def __init__(self, raw, **options) -> None:
        self.raw = raw
        options.setdefault("reset_on_return", None)
        super().__init__(lambda: raw, **options)

    def _do_get(self):
        return self._create_connection()

    def _do_return_conn(self, record) -> None:
        pass

    def _close_connection(self, connection, *, terminate: bool = False) -> None:
        pass

    def status(self) -> str:
        return "one session"

    def dispose(self) -> None:
        pass

    def recreate(self):
        return self.__class__(self.raw, _dispatch=self.dispatch, dialect=self._dialect)


def test_a_session_reused_through_fresh_pool_records_is_not_prepared_twice(engine, pg_url):
    """Prepared statements only where the pool record lives as long as the session."""
    raw = psycopg2.connect(make_url(pg_url).render_as_string(hide_password=False)
                           .replace("postgresql+psycopg2://", "postgresql://"))
    shared = create_engine("postgresql+psycopg2://", pool=_OneSessionPool(raw))
    store = MessageStore(shared, retention=timedelta(days=1), claim_timeout=0.5,
                         prepared_statements=True)
    try:
        for n in range(3):
            key = MessageKey("", f"django-like-{n}")
            connection = store.begin()
            try:
                assert store.claim(connection, key, "f" * 64, utcnow()) is None
                store.complete(connection, key, 200, [], b"ok")
                store.commit(connection)
            finally:
                connection.close()
        with engine.connect() as check:
            stored = check.exec_driver_sql(
                "SELECT count(*) FROM chttp_messages WHERE message_id LIKE 'django-like-%%' "
                "AND status = 200").scalar_one()
        assert stored == 3
    finally:
        raw.close()


@pytest.mark.parametrize("prepared", [False, True], ids=["default", "prepared"])
def test_statements_are_prepared_per_session_or_per_connection(engine, prepared):
    """By default the claim and the stored response of the store's own transaction are
    prepared together, on demand by each server session that lacks them (safe behind a
    transaction-mode pooler, docs/scale.rst; tests/server/test_fused_transaction.py);
    with ``prepared_statements`` once per pooled connection (direct connections). Either
    way the stored response runs the prepared statement."""
    options = {"prepared_statements": True} if prepared else {}
    store = MessageStore(engine, retention=timedelta(days=1), claim_timeout=0.5, **options)
    key = MessageKey("", f"prepared-{prepared}")
    connection = store.begin()
    try:
        assert store.claim(connection, key, "f" * 64, utcnow()) is None
        store.complete(connection, key, 200, [], b"ok")
        names = sorted(connection.exec_driver_sql(
            "SELECT name FROM pg_prepared_statements").scalars())
        runs = connection.exec_driver_sql(
            "SELECT generic_plans + custom_plans FROM pg_prepared_statements "
            "WHERE name LIKE 'chttp_complete_%%'").scalar_one()
        store.commit(connection)
    finally:
        connection.close()
    kinds = [name.rsplit("_", 1)[0] for name in names]
    assert kinds == ["chttp_claim", "chttp_complete"]
    assert runs == 1
    with engine.connect() as check:
        assert check.exec_driver_sql(
            "SELECT status FROM chttp_messages WHERE message_id = %(id)s",
            {"id": key.message_id}).scalar_one() == 200
