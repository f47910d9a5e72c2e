"""MessageTransaction, the contract front ends code against (chttp_server.transaction).

Own mode is what the WSGI middleware uses (every protocol test covers it); these tests
drive the object directly, and above all the **joined** mode a Django-style front end
uses: the front end owns the connection and its transaction and commits it itself.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select

from chttp_core.schema import messages
from chttp_server.decisions import IncomingMessage, Outcome, incoming_message
from chttp_server.errors import MessageIdReused, MessageTooOld, ResponseTooLarge, StoreUnavailable
from chttp_server.store import MessageKey, MessageStore
from chttp_server.transaction import MessageTransaction

from .apps import count_writes, host_writes


@pytest.fixture
def store(engine):
    return MessageStore(engine, retention=timedelta(days=1), claim_timeout=2.0)


def message(message_id: str = "t-1", body: bytes = b"x") -> IncomingMessage:
    return incoming_message("POST", "/t", "", body, message_id=message_id, scope="")


def stored_count(engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(messages)).scalar_one())


def test_own_mode_claims_stores_commits_then_replays(store, engine):
    incoming = message()
    with MessageTransaction(store, incoming.key, retry_after=1) as txn:
        assert txn.claim(incoming) is None
        txn.connection.execute(insert(host_writes).values(message_id="t-1", note="own"))
        assert txn.complete(201, [("X-A", "1")], b"done") is True
        assert txn.outcome is Outcome.STORE
    with MessageTransaction(store, incoming.key, retry_after=1) as txn:
        replay = txn.claim(incoming)
        assert txn.outcome is Outcome.ROLL_BACK
    assert replay is not None and replay.body == b"done" and replay.headers == [("X-A", "1")]
    assert count_writes(engine, "own") == 1
    with MessageTransaction(store, incoming.key, retry_after=1) as txn:
        with pytest.raises(MessageIdReused):
            txn.claim(message(body=b"other"))


def test_own_mode_rolls_back_a_5xx_an_exception_and_a_response_too_large(store, engine):
    incoming = message("t-2")
    with MessageTransaction(store, incoming.key, retry_after=1) as txn:
        txn.claim(incoming)
        txn.connection.execute(insert(host_writes).values(message_id="t-2", note="5xx"))
        assert txn.complete(503, [], b"later") is False
    with pytest.raises(RuntimeError):
        with MessageTransaction(store, incoming.key, retry_after=1) as txn:
            txn.claim(incoming)
            txn.connection.execute(insert(host_writes).values(message_id="t-2", note="raise"))
            raise RuntimeError("handler failed")
    with pytest.raises(ResponseTooLarge):
        with MessageTransaction(store, incoming.key, retry_after=1) as txn:
            txn.claim(incoming)
            txn.connection.execute(insert(host_writes).values(message_id="t-2", note="big"))
            txn.complete(200, [], b"", too_large=True, limit=10)
    assert count_writes(engine) == 0
    assert stored_count(engine) == 0


def test_joined_mode_leaves_commit_to_the_front_end(store, engine):
    incoming = message("j-1")
    with engine.connect() as connection:
        outer = connection.begin()  # the front end's transaction (Django: atomic)
        txn = MessageTransaction(store, incoming.key, retry_after=1, connection=connection)
        with txn:
            assert txn.claim(incoming) is None
            connection.execute(insert(host_writes).values(message_id="j-1", note="joined"))
            assert txn.complete(200, [], b"ok") is True
        assert txn.outcome is Outcome.STORE
        assert connection.in_transaction(), "joined mode must not commit or close"
        if engine.dialect.name == "postgresql":  # SQLite: the open transaction holds the lock
            assert stored_count(engine) == 0, "nothing is visible before the front end commits"
        outer.commit()
    assert count_writes(engine, "joined") == 1
    assert stored_count(engine) == 1


def test_joined_mode_calls_the_front_ends_commit_and_rollback(store, engine):
    calls: list[str] = []
    incoming = message("j-2")
    with engine.connect() as connection:
        connection.begin()

        def commit() -> None:
            calls.append("commit")
            connection.commit()

        def rollback() -> None:
            calls.append("rollback")
            connection.rollback()

        with MessageTransaction(store, incoming.key, retry_after=1, connection=connection,
                                commit=commit, rollback=rollback) as txn:
            txn.claim(incoming)
            assert txn.complete(500, [], b"") is False
        assert calls == ["rollback"]
        connection.begin()
        with MessageTransaction(store, incoming.key, retry_after=1, connection=connection,
                                commit=commit, rollback=rollback) as txn:
            txn.claim(incoming)
            txn.complete(200, [], b"ok")
        assert calls == ["rollback", "commit"]
        connection.begin()
        with MessageTransaction(store, incoming.key, retry_after=1, connection=connection,
                                commit=commit, rollback=rollback) as txn:
            assert txn.claim(incoming) is not None  # a retry: ended, then replayed
        # PostgreSQL commits a replay's transaction once the synchronous standbys hold the
        # row it read (MessageStore.hold_until_replicated); SQLite rolls it back.
        ended = "commit" if engine.dialect.name == "postgresql" else "rollback"
        assert calls == ["rollback", "commit", ended]
    assert stored_count(engine) == 1


def test_a_too_old_first_claim_is_412_and_nothing_is_kept(store, engine):
    from datetime import datetime, timezone

    old = IncomingMessage("o-1", "", "f", first_sent=datetime(2000, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(MessageTooOld):
        with MessageTransaction(store, old.key, retry_after=1) as txn:
            txn.claim(old)
    assert stored_count(engine) == 0


def test_an_unreachable_store_is_503_with_the_configured_retry_after(tmp_path):
    from chttp_core.db import make_engine

    engine = make_engine("postgresql://nobody@127.0.0.1:1/none")
    store = MessageStore(engine, retention=timedelta(days=1), claim_timeout=1.0)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            with MessageTransaction(store, MessageKey("", "u-1"), retry_after=7):
                pass
        assert caught.value.retry_after == 7
        assert caught.value.code == 503
    finally:
        engine.dispose()


def test_commit_and_rollback_callables_need_a_joined_connection(store):
    with pytest.raises(ValueError):
        MessageTransaction(store, MessageKey("", "x"), retry_after=1, commit=lambda: None)
