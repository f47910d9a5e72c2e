"""Handler sends give up after a short per-run deadline; the incoming retry resends them.

A receiver handler that sends (``req.chttp.post``) holds its database transaction open
while it waits, so it must not retry for the journal's one-day send deadline. After
``CertifiedMiddleware(handler_send_deadline=…)`` (30 s by default) the send raises
:class:`DeadlineExceeded` *without* recording it: the step stays "recorded", the handler
lets the error propagate, the middleware rolls back (500, the incoming key stays free),
and the incoming sender's retry replays the handler's oplog and resends the same
derived id. Only the send's own deadline, measured from its first attempt, is final.

Three real pieces: the incoming sender (a resumable function on its own SQLite journal),
the upstream receiver under test (on ``db_url``, served by waitress on 127.0.0.1, which
turns the handler's exception into a 500) and the downstream receiver (behind
WSGITransport: 503s, or first a closed loopback port, i.e. connection refused).
Both journals run on fake clocks that the senders' sleeps advance, so 30 s pass at once.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import insert
from webtest import TestApp

from chttp_client import DeadlineExceeded, Journal, RetryPolicy, resumable
from chttp_core.db import make_engine
from chttp_client.incoming import derived_message_id, incoming_oplog_id
from chttp_client.testing import set_fault_hook
from chttp_server import CertifiedMiddleware, ConfigurationError, Resource
from tests.client.conftest import FakeClock
from tests.client.receiver import count_runs, make_receiver, receiver_metadata, receiver_runs
from tests.server.live import serve_in_thread

# RetryPolicy(jitter=False): attempts at 0, 0.5, 1.5, 3.5, 7.5 and 15.5 s; the next one
# would be at 31.5 s, after a 30 s deadline. So one handler run makes 6 attempts.
ATTEMPTS_PER_RUN = 6


def closed_port() -> int:
    """A loopback port nothing listens on (connecting to it is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Downstream(httpx.BaseTransport):
    """Routes the handler's sends: the first ``refuse`` attempts to a closed loopback port,
    the rest to the downstream receiver (which itself answers 503 ``front.failures`` times)."""

    def __init__(self, receiver, refuse: int) -> None:
        self.receiver = httpx.WSGITransport(app=receiver)
        self.refused = httpx.HTTPTransport()
        self.refuse = refuse
        self.port = closed_port()
        self.attempts: list[str] = []  # the X-Message-ID of every attempt

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "X-Message-ID" not in request.headers:  # the acknowledgement (DELETE)
            return self.receiver.handle_request(request)
        self.attempts.append(request.headers["X-Message-ID"])
        if len(self.attempts) <= self.refuse:
            url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self.port)
            return self.refused.handle_request(httpx.Request(request.method, url, headers=request.headers,
                                                             content=request.content))
        return self.receiver.handle_request(request)

    def close(self) -> None:
        self.refused.close()


class Relay(Resource):
    """Persists a nonce, posts it downstream, records its own run, answers both."""

    def __init__(self) -> None:
        self.nonces: list[int] = []
        self.errors: list[BaseException] = []

    def handle_post(self, req):
        nonce = req.chttp.persist(len(self.nonces) + 100)  # differs per run unless replayed
        self.nonces.append(nonce)
        try:
            answer = req.chttp.post("http://downstream.test/flaky", json={"nonce": nonce})
        except DeadlineExceeded as error:
            self.errors.append(error)
            raise  # let it propagate: the middleware rolls back, the key stays free
        req.chttp.connection.execute(insert(receiver_runs).values(
            message_id=req.chttp.message_id, path="/relay", body=str(nonce)))
        return {"nonce": nonce, "downstream": answer.status_code}


class Upstream(Resource):
    def __init__(self, relay: Relay) -> None:
        self.children = {"relay": relay}


@pytest.fixture
def upstream(db_url, tmp_path):
    """Factory: the upstream receiver with its handler journal, downstream and clock."""
    made: list = []

    def make(*, refuse: int, fail: int, send_deadline=timedelta(days=1), **middleware_options):
        downstream = make_receiver(f"sqlite:///{tmp_path / 'downstream.db'}")
        downstream.failures, downstream.status = fail, 503
        transport = Downstream(downstream, refuse)
        clock = FakeClock()
        engine = make_engine(db_url)
        options = {"transport": transport, "clock": clock, "sleep": clock.sleep,
                   "retry": RetryPolicy(jitter=False, deadline=send_deadline)}
        if engine.dialect.name == "sqlite":  # the handler's transaction locks db_url's file
            journal = Journal(f"sqlite:///{tmp_path / 'outgoing.db'}", **options)
        else:
            journal = Journal(engine=engine, **options)
        relay = Relay()
        app = CertifiedMiddleware(Upstream(relay), engine=engine, journal=journal, upgrade_schema=True,
                                  **middleware_options)
        receiver_metadata.create_all(engine)
        made.append((journal, engine, downstream, transport))
        return app, relay, journal, downstream, transport

    yield make
    for journal, engine, downstream, transport in made:
        journal.close()
        engine.dispose()
        downstream.engine.dispose()
        transport.close()


@pytest.mark.parametrize("refuse, fail", [
    pytest.param(0, ATTEMPTS_PER_RUN, id="downstream-503"),
    pytest.param(ATTEMPTS_PER_RUN, 0, id="downstream-unreachable"),
])
def test_a_handler_send_times_out_rolls_back_and_the_incoming_retry_resends_it(upstream, tmp_path, refuse, fail):
    app, relay, handler_journal, downstream, transport = upstream(refuse=refuse, fail=fail)
    sender_clock = FakeClock()
    sender = Journal(f"sqlite:///{tmp_path / 'sender.db'}", clock=sender_clock,
                     sleep=sender_clock.sleep, retry=RetryPolicy(jitter=False))
    sender_attempts = []
    set_fault_hook(sender, lambda event: sender_attempts.append(event) if event.point == "send-attempt" else None)

    @resumable(sender)
    def start(url, *, chttp_context):
        return chttp_context.post(f"{url}/relay", json={"go": True}).json()

    try:
        # a real WSGI server on loopback: it turns the handler's exception into a 500
        with serve_in_thread(app) as url:
            answer = start(url)
        [oplog] = sender.list()
        incoming_id = sender.get(oplog.id).steps[0].message_id
    finally:
        sender.close()

    assert answer == {"nonce": 100, "downstream": 201}
    # the incoming sender: a 500 (the handler's DeadlineExceeded), then the answer
    assert len(sender_attempts) == 2
    # the handler ran twice: gave up after 30 s the first time, replayed its nonce the second
    assert relay.nonces == [100, 100]
    assert len(relay.errors) == 1 and "this run" in str(relay.errors[0])
    assert relay.errors[0].message_id == derived_message_id("", incoming_id, 2)
    # every downstream attempt, across both runs, carried the one derived id
    assert transport.attempts == [derived_message_id("", incoming_id, 2)] * (ATTEMPTS_PER_RUN + 1)
    assert count_runs(downstream.engine) == 1  # downstream ran once
    assert count_runs(app.engine) == 1  # the upstream handler's write committed once
    handler_oplog = handler_journal.get(incoming_oplog_id("", incoming_id))
    assert [(s.kind, s.state) for s in handler_oplog.steps] == [("persist", "done"), ("send", "done")]
    assert handler_oplog.steps[1].response["status"] == 201


def test_only_the_sends_own_deadline_is_recorded_as_final(upstream):
    # A send deadline of 45 s: the first run gives up at 30 s (not recorded), the second
    # at 45 s after the first attempt (recorded), the third replays that without sending.
    app, relay, handler_journal, _downstream, transport = upstream(
        refuse=0, fail=100, send_deadline=timedelta(seconds=45))
    client = TestApp(app)

    def step_state() -> str:
        return handler_journal.get(incoming_oplog_id("", "in-1")).steps[1].state

    with pytest.raises(DeadlineExceeded, match="this run"):
        client.post_json("/relay", {}, headers={"X-Message-ID": "in-1"})
    assert step_state() == "recorded"
    first_run = len(transport.attempts)
    assert first_run == ATTEMPTS_PER_RUN

    with pytest.raises(DeadlineExceeded, match="within 0:00:45") as final:
        client.post_json("/relay", {}, headers={"X-Message-ID": "in-1"})
    assert "this run" not in str(final.value)
    assert step_state() == "done"
    second_run = len(transport.attempts)
    assert second_run > first_run

    with pytest.raises(DeadlineExceeded, match="within 0:00:45"):
        client.post_json("/relay", {}, headers={"X-Message-ID": "in-1"})
    assert len(transport.attempts) == second_run  # replayed from the record, nothing sent
    assert set(transport.attempts) == {derived_message_id("", "in-1", 2)}
    assert relay.nonces == [100, 100, 100]


def test_no_run_bound_when_handler_send_deadline_is_none(upstream):
    app, _relay, _journal, _downstream, transport = upstream(
        refuse=0, fail=20, handler_send_deadline=None)
    # no run bound: the send retries until the downstream answers (the journal's 1 day)
    response = TestApp(app).post_json("/relay", {}, headers={"X-Message-ID": "in-2"})
    assert response.json == {"nonce": 100, "downstream": 201}
    assert len(transport.attempts) == 21
    assert app.handler_send_deadline is None


def test_handler_send_deadline_default_and_validation(sqlite_url):
    app = CertifiedMiddleware(Relay(), db_url=sqlite_url, upgrade_schema=True)
    try:
        assert app.handler_send_deadline == timedelta(seconds=30)
    finally:
        app.engine.dispose()
    with pytest.raises(ConfigurationError, match="handler_send_deadline"):
        CertifiedMiddleware(Relay(), db_url=sqlite_url, handler_send_deadline=timedelta(0))
