"""The sender's metrics and spans, and W3C trace context from sender to receiver.

The receiver is real: a waitress server on loopback (one trace from the sender's span to
the receiver's), or ``httpx.WSGITransport`` around ``CertifiedMiddleware`` where a fake
clock drives retries and deadlines without waiting.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from chttp_client import DeadlineExceeded, Journal, NonDeterminismError, RetryPolicy, resumable
from chttp_client.testing import expire_leases, set_fault_hook
from chttp_server import CertifiedMiddleware
from tests.client.conftest import Crash, FakeClock, crash_at
from tests.client.receiver import count_runs, make_receiver
from tests.server.live import serve_in_thread

BASE = "http://receiver.test"


@pytest.fixture
def receiver(tmp_path):
    front = make_receiver(f"sqlite:///{tmp_path / 'receiver.db'}")
    yield front
    front.engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def journal(db_url, receiver, clock):
    with Journal(db_url, transport=httpx.WSGITransport(app=receiver), clock=clock,
                 sleep=clock.sleep, retry=RetryPolicy(jitter=False)) as journal:
        yield journal


def test_one_trace_from_the_senders_span_to_the_receivers_over_real_http(tmp_path, db_url,
                                                                        receiver, otel):
    with serve_in_thread(receiver) as base, Journal(db_url) as journal:
        @resumable(journal, name="telemetry.live_send")
        def transfer(amount, *, chttp_context):
            return chttp_context.post(f"{base}/escrow", json={"amount": amount}).json()

        answer = transfer(7)
        [oplog] = journal.list()
        [step] = journal.get(oplog.id).steps
    [send] = otel.spans("chttp.send")
    [receive] = otel.spans("chttp.receive")
    assert answer["message_id"] == step.message_id
    assert send.attributes["chttp.message_id"] == receive.attributes["chttp.message_id"] == step.message_id
    assert send.attributes["chttp.outcome"] == "answered"
    assert send.attributes["http.response.status_code"] == 201
    assert receive.context.trace_id == send.context.trace_id
    assert receive.parent.span_id == send.context.span_id
    # The library's traceparent is not part of the recorded request (the determinism check).
    assert all(name.lower() != "traceparent" for name, _value in step.request["headers"])
    assert otel.counter("chttp.client.sends", "chttp.outcome") == {"answered": 1}
    assert otel.counter("chttp.client.attempts") == {None: 1}
    assert otel.counter("chttp.client.oplogs", "chttp.oplog.state") == {"open": 1, "done": 1}


def test_retries_are_counted_by_cause(journal, receiver, otel):
    receiver.failures = 2  # a proxy in front answers 503 twice

    @resumable(journal, name="telemetry.flaky")
    def flaky(*, chttp_context):
        return chttp_context.post(f"{BASE}/flaky", content=b"x").status_code

    assert flaky() == 201
    assert otel.counter("chttp.client.retries", "chttp.retry.cause") == {"status_503": 2}
    assert otel.counter("chttp.client.attempts") == {None: 3}
    [send] = otel.spans("chttp.send")
    assert send.attributes["chttp.attempts"] == 3


def test_a_deadline_exceeded_is_counted_with_connection_retries(db_url, clock, otel):
    refused = httpx.MockTransport(lambda request: (_ for _ in ()).throw(
        httpx.ConnectError("connection refused", request=request)))
    with Journal(db_url, transport=refused, clock=clock, sleep=clock.sleep,
                 retry=RetryPolicy(jitter=False, deadline=timedelta(seconds=5))) as journal:
        @resumable(journal, name="telemetry.unreachable")
        def unreachable(*, chttp_context):
            return chttp_context.post(f"{BASE}/escrow", content=b"x")

        with pytest.raises(DeadlineExceeded):
            unreachable()
    retries = otel.counter("chttp.client.retries", "chttp.retry.cause")
    assert set(retries) == {"connection"} and retries["connection"] >= 1
    assert otel.counter("chttp.client.deadlines_exceeded", "chttp.deadline") == {"send": 1}
    assert otel.counter("chttp.client.sends", "chttp.outcome") == {"deadline_exceeded": 1}
    assert otel.counter("chttp.client.oplogs", "chttp.oplog.state") == {"open": 1, "failed": 1}


def test_a_resumed_send_after_a_crash_keeps_its_message_id(journal, receiver, clock, otel):
    @resumable(journal, name="telemetry.crashing")
    def crashing(*, chttp_context):
        return chttp_context.post(f"{BASE}/escrow", json={"amount": 3}).json()

    set_fault_hook(journal, crash_at("send-attempt", 1))
    with pytest.raises(Crash):
        crashing()
    set_fault_hook(journal, None)
    assert len(journal.list_open()) == 1
    clock.now += journal.lease * 2
    assert expire_leases(journal) == 1  # the crashed run's lease has run out (database clock)
    [outcome] = journal.resume_all()
    assert outcome.status == "done"
    first, resumed = otel.spans("chttp.send")
    assert first.attributes["chttp.outcome"] == "error"
    assert resumed.attributes["chttp.outcome"] == "answered"
    assert first.attributes["chttp.message_id"] == resumed.attributes["chttp.message_id"]
    assert first.context.trace_id != resumed.context.trace_id  # another run, another trace
    assert outcome.value["message_id"] == first.attributes["chttp.message_id"]
    assert count_runs(receiver.engine) == 1
    assert otel.counter("chttp.client.resumes") == {None: 1}
    assert otel.counter("chttp.client.nondeterminism_errors") == {}


def test_non_determinism_is_counted(journal, clock, otel):
    amounts = iter([1, 2])

    @resumable(journal, name="telemetry.changing")
    def changing(*, chttp_context):
        return chttp_context.post(f"{BASE}/escrow", json={"amount": next(amounts)}).json()

    set_fault_hook(journal, crash_at("send-attempt", 1))
    with pytest.raises(Crash):
        changing()
    set_fault_hook(journal, None)
    [oplog] = journal.list_open()
    with pytest.raises(NonDeterminismError):
        journal.resume(oplog.id, force=True)
    assert otel.counter("chttp.client.nondeterminism_errors") == {None: 1}
    assert otel.counter("chttp.client.resumes") == {None: 1}


def test_a_handlers_send_continues_the_incoming_trace(pg_url, tmp_path, otel):
    """escrow → ledger: the receiver's handler sends, and the ledger's span joins the trace."""
    ledger = make_receiver(f"sqlite:///{tmp_path / 'ledger.db'}")
    with serve_in_thread(ledger) as ledger_base:
        def escrow(environ, start_response):
            answer = environ["chttp.context"].post(f"{ledger_base}/escrow", json={"amount": 10})
            start_response("201 Created", [("Content-Type", "text/plain")])
            return [answer.content]

        front = CertifiedMiddleware(escrow, db_url=pg_url, upgrade_schema=True)
        try:
            with serve_in_thread(front) as escrow_base:
                response = httpx.post(f"{escrow_base}/pay", content=b"10",
                                      headers={"X-Message-ID": "chain-1"}, timeout=30)
        finally:
            front.engine.dispose()
    ledger.engine.dispose()
    assert response.status_code == 201
    outer, inner = sorted(otel.spans("chttp.receive"), key=lambda s: s.start_time)
    [send] = otel.spans("chttp.send")
    assert outer.attributes["chttp.message_id"] == "chain-1"
    assert {outer.context.trace_id, send.context.trace_id, inner.context.trace_id} == {
        outer.context.trace_id}
    assert inner.parent.span_id == send.context.span_id


@pytest.mark.parametrize(("response", "error", "cause"), [
    pytest.param(None, httpx.ReadTimeout("slow"), "timeout", id="timeout"),
    pytest.param(None, httpx.ConnectError("refused"), "connection", id="connection"),
    pytest.param(httpx.Response(409), None, "status_409", id="in-progress"),
    pytest.param(httpx.Response(429), None, "status_429", id="too-many"),
])
def test_retry_causes(response, error, cause):
    from chttp_client.telemetry import retry_cause

    assert retry_cause(response, error) == cause
