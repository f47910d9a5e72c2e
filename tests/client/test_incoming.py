"""A receiver's handler as a sender: req.chttp.persist/post with derived ids (issue item 6).

Upstream receiver A (the handler under test, on ``db_url``) sends to downstream receiver
B (tests.client.receiver) through httpx.WSGITransport; requests to A go through WebTest.
"""

from __future__ import annotations

import random

import httpx
import pytest
import webob
from sqlalchemy import insert, select
from webtest import TestApp

from chttp_client import Journal, NonDeterminismError
from chttp_core.db import make_engine
from chttp_client.errors import ChttpClientError
from chttp_client.incoming import derived_message_id, incoming_oplog_id, journal_for_engine
from chttp_server import CertifiedMiddleware, Resource
from chttp_core.schema import messages
from tests.client.conftest import BASE
from tests.client.receiver import count_runs, make_receiver, receiver_metadata, receiver_runs, runs


class Relay(Resource):
    """Persists a nonce, posts it downstream, then fails ``failures`` times with a 500."""

    def __init__(self) -> None:
        self.failures = 1
        self.target = f"{BASE}/escrow"
        self.nonces: list[float] = []

    def handle_post(self, req):
        nonce = req.chttp.persist(random.random)
        self.nonces.append(nonce)
        downstream = req.chttp.post(self.target, json={"nonce": nonce})
        req.chttp.connection.execute(insert(receiver_runs).values(
            message_id=req.chttp.message_id, path="/relay", body=str(nonce)))
        if self.failures > 0:
            self.failures -= 1
            return webob.Response(status=500, body=b"crashed after the send")
        return {"nonce": nonce, "downstream": downstream.json()}


class Draw(Resource):
    """Persists a value and fails once without sending anything."""

    def __init__(self) -> None:
        self.failures = 1
        self.values: list[float] = []

    def handle_post(self, req):
        self.values.append(req.chttp.persist(random.random))
        if self.failures > 0:
            self.failures -= 1
            return webob.Response(status=503)
        return {"value": self.values[-1]}


class Upstream(Resource):
    def __init__(self) -> None:
        self.relay = Relay()
        self.draw = Draw()
        self.children = {"relay": self.relay, "draw": self.draw}


@pytest.fixture
def chain(db_url, tmp_path):
    downstream = make_receiver(f"sqlite:///{tmp_path / 'downstream.db'}")
    engine = make_engine(db_url)
    transport = httpx.WSGITransport(app=downstream)
    if engine.dialect.name == "sqlite":
        journal = Journal(f"sqlite:///{tmp_path / 'outgoing.db'}", transport=transport)
    else:  # PostgreSQL: the receiver's own database, on separate connections
        journal = Journal(engine=engine, transport=transport)
    resource = Upstream()
    upstream = CertifiedMiddleware(resource, engine=engine, journal=journal, upgrade_schema=True)
    receiver_metadata.create_all(engine)
    yield TestApp(upstream), resource, downstream, journal, engine
    journal.close()
    engine.dispose()
    downstream.engine.dispose()


def test_retried_incoming_message_resends_the_same_outgoing_message(chain):
    app, resource, downstream, journal, engine = chain
    first = app.post("/relay", headers={"X-Message-ID": "in-1"}, status=500)
    assert first.body == b"crashed after the send"
    assert count_runs(engine) == 0  # the handler's own write rolled back …
    assert count_runs(downstream.engine) == 1  # … but its send happened

    second = app.post("/relay", headers={"X-Message-ID": "in-1"}, status=200)
    assert resource.relay.nonces[0] == resource.relay.nonces[1] == second.json["nonce"]
    outgoing_id = derived_message_id("", "in-1", 2)
    assert second.json["downstream"]["message_id"] == outgoing_id
    assert count_runs(downstream.engine) == 1  # downstream ran once: it replayed its answer
    assert [r[0] for r in runs(downstream.engine)] == [outgoing_id]
    assert count_runs(engine) == 1

    replay = app.post("/relay", headers={"X-Message-ID": "in-1"}, status=200)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert count_runs(downstream.engine) == 1


@pytest.mark.parametrize("status", [pytest.param(500, id="rolled-back"), pytest.param(200, id="committed")])
def test_the_handlers_buffered_answer_is_journaled_when_the_request_ends(chain, status):
    app, resource, downstream, journal, _engine = chain
    resource.relay.failures = 1 if status == 500 else 0
    app.post("/relay", headers={"X-Message-ID": "in-end"}, status=status)
    journal.wait_for_acknowledgements()
    persist, send = journal.get(incoming_oplog_id("", "in-end")).steps
    assert persist.state == "done"
    assert (send.state, send.response["status"]) == ("done", 201)
    assert send.message_id == derived_message_id("", "in-end", 2)
    # Journaled first, then acknowledged: the downstream may forget its answer.
    assert send.acknowledged_at is not None
    with downstream.engine.connect() as connection:
        assert connection.execute(select(messages.c.state).where(
            messages.c.message_id == send.message_id)).scalar_one() == "acknowledged"


def test_other_incoming_ids_and_scopes_derive_other_outgoing_ids(chain):
    app, resource, downstream, _journal, _engine = chain
    resource.relay.failures = 0
    app.post("/relay", headers={"X-Message-ID": "in-a"}, status=200)
    app.post("/relay", headers={"X-Message-ID": "in-b"}, status=200)
    app.post("/relay", headers={"X-Message-ID": "in-a"}, extra_environ={"REMOTE_USER": "bob"}, status=200)
    ids = [r[0] for r in runs(downstream.engine)]
    assert ids == [derived_message_id("", "in-a", 2), derived_message_id("", "in-b", 2),
                   derived_message_id("bob", "in-a", 2)]
    assert len(set(ids)) == 3


def test_persist_survives_the_handlers_rollback(chain):
    app, resource, _downstream, _journal, _engine = chain
    app.post("/draw", headers={"X-Message-ID": "draw-1"}, status=503)
    answer = app.post("/draw", headers={"X-Message-ID": "draw-1"}, status=200)
    assert resource.draw.values[0] == resource.draw.values[1] == answer.json["value"]


def test_checkpoint_makes_a_handlers_persist_durable_before_the_request_ends(chain):
    from chttp_client.errors import JournalError
    from chttp_server.context import CertifiedContext
    from chttp_server.store import utcnow

    _app, _resource, _downstream, journal, engine = chain

    def handler_context(connection):
        return CertifiedContext(
            message_id="cp-1", scope="", fingerprint="0" * 64, connection=connection,
            received_at=utcnow(), expires_at=utcnow(), environ={}, journal=journal)

    with engine.connect() as connection:
        first = handler_context(connection)
        value = first.persist(random.random)
        with pytest.raises(JournalError):
            journal.get(incoming_oplog_id("", "cp-1"))  # still buffered in memory
        first.checkpoint()
        (step,) = journal.get(incoming_oplog_id("", "cp-1")).steps
        assert (step.kind, step.state) == ("persist", "done")
        # The process "dies" here: first.close() never runs. A retry of the same
        # incoming message gets the checkpointed value back, not a fresh draw.
        del first
        retry = handler_context(connection)
        assert retry.persist(random.random) == value
        retry.close()


def test_a_retry_that_asks_for_another_send_is_refused(chain):
    app, resource, downstream, journal, _engine = chain
    app.post("/relay", headers={"X-Message-ID": "in-x"}, status=500)
    resource.relay.target = f"{BASE}/status/201"
    with pytest.raises(NonDeterminismError, match="step 2"):
        app.post("/relay", headers={"X-Message-ID": "in-x"})
    assert count_runs(downstream.engine) == 1


def test_resume_all_leaves_incoming_oplogs_to_incoming_retries(chain):
    app, _resource, _downstream, journal, _engine = chain
    app.post("/relay", headers={"X-Message-ID": "in-r"}, status=500)
    assert [o.function for o in journal.list_open()] == ["chttp.incoming"]
    assert journal.resume_all() == []


def test_default_journal_is_the_receivers_postgresql_database(db_url):
    engine = make_engine(db_url)
    try:
        if engine.dialect.name == "sqlite":
            with pytest.raises(ChttpClientError, match="another file|outside the SQLite"):
                journal_for_engine(engine)
        else:
            journal = journal_for_engine(engine)
            assert journal.engine is engine and journal_for_engine(engine) is journal
    finally:
        engine.dispose()
