"""Certified sends against a real receiver (httpx.WSGITransport around CertifiedMiddleware)."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from chttp_client import (
    DeadlineExceeded,
    MessageGoneError,
    MessageIdReusedError,
    MessageRejectedError,
    MessageTooOldError,
    RetryPolicy,
    resumable,
)
from chttp_client.journal import register
from chttp_client.sending import retry_after_of
from chttp_core.schema import messages
from chttp_client.testing import set_fault_hook
from tests.client.conftest import BASE, Crash, crash_at
from tests.client.receiver import count_runs, runs


def step_of(journal, number=1):
    [info] = journal.list()
    return journal.get(info.id).steps[number - 1]


def test_send_carries_id_and_first_sent_and_returns_the_response(journal, receiver, fake_clock):
    seen = []
    set_fault_hook(journal, lambda e: seen.append(e) if e.point == "send-attempt" else None)

    @resumable(journal)
    def f(amount, *, chttp_context):
        response = chttp_context.post(f"{BASE}/escrow", json={"amount": amount})
        return response.status_code, response.json(), response.headers["content-type"]

    status, body, content_type = f(5)
    assert status == 201 and body["amount"] == 5 and content_type == "application/json"
    step = step_of(journal)
    assert body["message_id"] == step.message_id
    assert step.state == "done" and step.response["status"] == 201
    assert step.request["method"] == "POST" and step.request["url"] == f"{BASE}/escrow"
    assert step.first_sent_at.replace(microsecond=0) <= fake_clock.now
    assert [e.message_id for e in seen] == [step.message_id]
    assert count_runs(receiver.engine, step.message_id) == 1


def test_response_is_recorded_and_rebuilt_on_replay(journal, receiver):
    results = []

    @resumable(journal)
    def f(*, chttp_context):
        response = chttp_context.post(f"{BASE}/escrow", json={"amount": 1})
        results.append((response.status_code, response.content, response.headers.get("x-message-url")))
        chttp_context.persist("after")
        chttp_context.post(f"{BASE}/escrow", json={"amount": 2})
        return response.json()["random number"]

    set_fault_hook(journal, crash_at("before-step", 3))
    with pytest.raises(Crash):
        f()
    set_fault_hook(journal, None)
    [oplog] = journal.list_open()
    number = journal.resume(oplog.id, force=True)
    assert results[0] == results[1]
    assert number == httpx.Response(200, content=results[0][1]).json()["random number"]
    assert count_runs(receiver.engine) == 2


@pytest.mark.parametrize(
    ("status", "failures", "retry_after"),
    [
        pytest.param(503, 2, None, id="503"),
        pytest.param(429, 1, "7", id="429-retry-after"),
        pytest.param(409, 2, None, id="409-in-progress"),
        pytest.param(502, 3, None, id="502"),
    ],
)
def test_retryable_answers_are_retried_with_the_same_id(make_journal, receiver, fake_clock,
                                                       status, failures, retry_after):
    flaky = receiver
    flaky.status, flaky.failures, flaky.retry_after = status, failures, retry_after
    journal = make_journal()

    @resumable(journal)
    def f(*, chttp_context):
        return chttp_context.post(f"{BASE}/flaky", json={}).json()

    assert f() == {"ok": True}
    assert list(flaky.seen.values()) == [failures + 1]
    assert len(fake_clock.sleeps) == failures
    expected = [0.5 * 2 ** i for i in range(failures)]
    if retry_after:
        expected = [max(e, float(retry_after)) for e in expected]
    assert fake_clock.sleeps == expected
    assert count_runs(receiver.engine) == 1


@pytest.mark.parametrize("status", [pytest.param(501, id="501"), pytest.param(505, id="505"),
                                    pytest.param(409, id="409-application")])
def test_definitive_answers_are_not_retried(journal, receiver, fake_clock, status):
    @resumable(journal)
    def f(*, chttp_context):
        return chttp_context.post(f"{BASE}/status/{status}", json={}).status_code

    assert f() == status
    assert fake_clock.sleeps == []


def test_connection_errors_are_retried_until_the_deadline(make_journal, fake_clock):
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    journal = make_journal(transport=httpx.MockTransport(refuse),
                           retry=RetryPolicy(jitter=False, deadline=timedelta(minutes=5)))

    @resumable(journal)
    def f(*, chttp_context):
        try:
            chttp_context.post(f"{BASE}/escrow", json={})
        except DeadlineExceeded as error:
            return error.message_id, error.detail

    message_id, detail = f()
    assert "ConnectError" in detail
    assert sum(fake_clock.sleeps) == pytest.approx(300)
    assert max(fake_clock.sleeps) <= 60
    step = step_of(journal)
    assert step.message_id == message_id and step.outcome["error"]["type"].endswith("DeadlineExceeded")


def test_retry_after_http_date(fake_clock):
    from chttp_core.wire import format_http_date

    response = httpx.Response(503, headers={"Retry-After": format_http_date(fake_clock.now + timedelta(seconds=90))})
    assert retry_after_of(response, fake_clock.now) == pytest.approx(90, abs=1)


def test_backoff_has_jitter_and_a_cap():
    import random as stdlib_random

    policy = RetryPolicy()
    rng = stdlib_random.Random(1)
    delays = [policy.backoff(n, rng) for n in range(1, 20)]
    assert all(d <= 60 for d in delays)
    assert len(set(delays)) == len(delays)
    assert all(0.5 * min(60, 0.5 * 2 ** (n - 1)) <= d for n, d in enumerate(delays, 1))


def test_acknowledgement_deletes_the_stored_response(journal, receiver):
    @resumable(journal)
    def f(*, chttp_context):
        return chttp_context.post(f"{BASE}/escrow", json={}).headers["x-message-url"]

    url = f()
    journal.wait_for_acknowledgements()
    step = step_of(journal)
    assert url == "/chttp/messages/" + step.message_id
    assert step.message_url == BASE + url
    assert step.acknowledged_at is not None
    with receiver.engine.connect() as connection:
        state = connection.execute(select(messages.c.state).where(
            messages.c.message_id == step.message_id)).scalar_one()
    assert state == "acknowledged"


def test_failed_acknowledgement_is_retried_by_resume_all(make_journal, receiver):
    transport = httpx.WSGITransport(app=receiver)

    class NoDeletes(httpx.BaseTransport):
        def handle_request(self, request):
            if request.method == "DELETE":
                raise httpx.ConnectError("down", request=request)
            return transport.handle_request(request)

    journal = make_journal(transport=NoDeletes())

    @resumable(journal)
    def f(*, chttp_context):
        chttp_context.post(f"{BASE}/escrow", json={})

    f()
    journal.wait_for_acknowledgements()
    assert step_of(journal).acknowledged_at is None
    later = make_journal()
    assert later.resume_all() == []
    assert step_of(later).acknowledged_at is not None


def fixed_id(journal, message_id):
    """Run sends with a chosen id (to provoke the receiver's protocol answers)."""

    def run(function, *args):
        name = f"fixed-{id(function)}"
        register(name, 1, function)
        return journal.run(name, 1, function, args, {}, message_id_for=lambda _n: message_id)

    return run


def test_reused_id_is_message_id_reused(journal, receiver):
    run = fixed_id(journal, "reused-id")

    def send(amount, *, chttp_context):
        return chttp_context.post(f"{BASE}/escrow", json={"amount": amount}).status_code

    journal.acknowledge = False
    assert run(send, 1) == 201
    with pytest.raises(MessageIdReusedError) as caught:
        run(send, 2)
    assert caught.value.response.status_code == 422
    assert caught.value.message_id == "reused-id"
    assert count_runs(receiver.engine) == 1


def test_acknowledged_id_is_message_gone(journal, receiver):
    run = fixed_id(journal, "acked-id")

    def send(*, chttp_context):
        return chttp_context.post(f"{BASE}/escrow", json={}).status_code

    assert run(send) == 201
    journal.wait_for_acknowledgements()
    with pytest.raises(MessageGoneError) as caught:
        run(send)
    assert caught.value.problem_type == "message-acknowledged"
    assert count_runs(receiver.engine) == 1


def test_malformed_id_is_message_rejected(journal):
    with pytest.raises(MessageRejectedError):
        fixed_id(journal, "not valid!")(
            lambda *, chttp_context: chttp_context.post(f"{BASE}/escrow", json={}).status_code)


def test_too_old_first_sent_is_message_too_old(make_journal, fake_clock, receiver):
    journal = make_journal(retry=RetryPolicy(deadline=timedelta(days=30)))
    fake_clock.now -= timedelta(days=20)

    @resumable(journal)
    def f(*, chttp_context):
        chttp_context.post(f"{BASE}/escrow", json={})

    with pytest.raises(MessageTooOldError):
        f()
    assert count_runs(receiver.engine) == 0


def test_protocol_error_is_reraised_on_replay(journal, receiver):
    journal.acknowledge = False
    fixed_id(journal, "dup")(
        lambda *, chttp_context: chttp_context.post(f"{BASE}/escrow", json={"a": 1}).status_code)

    def f(*, chttp_context):
        try:
            chttp_context.post(f"{BASE}/escrow", json={"a": 2})
        except MessageIdReusedError:
            pass
        chttp_context.persist("x")
        chttp_context.post(f"{BASE}/escrow", json={"a": 3})

    set_fault_hook(journal, crash_at("before-step", 3))
    with pytest.raises(Crash):
        fixed_id(journal, "dup")(f)
    set_fault_hook(journal, None)
    [oplog] = journal.list_open()
    with pytest.raises(MessageIdReusedError):  # step 3 reuses "dup" too: the replayed 422 was handled
        journal.resume(oplog.id, force=True, message_id_for=lambda _n: "dup")
    assert [r[2] for r in runs(receiver.engine)] == ['{"a":1}']


def test_429_with_retry_after_as_an_http_date_waits_until_then(make_journal, receiver, fake_clock):
    from chttp_core.wire import format_http_date

    receiver.status, receiver.failures = 429, 1
    receiver.retry_after = format_http_date(fake_clock.now + timedelta(seconds=42))
    journal = make_journal()

    @resumable(journal)
    def f(*, chttp_context):
        return chttp_context.post(f"{BASE}/flaky", json={}).json()

    assert f() == {"ok": True}
    assert len(fake_clock.sleeps) == 1 and fake_clock.sleeps[0] == pytest.approx(42, abs=1)
    assert list(receiver.seen.values()) == [2]  # the same id twice
    assert count_runs(receiver.engine) == 1


def test_an_expired_send_deadline_is_recorded_and_never_resent_under_a_new_id(make_journal, receiver,
                                                                               fake_clock):
    refused: list[str] = []

    def refuse(request):
        refused.append(request.headers["x-message-id"])
        raise httpx.ConnectError("down", request=request)

    journal = make_journal(transport=httpx.MockTransport(refuse),
                           retry=RetryPolicy(jitter=False, deadline=timedelta(minutes=5)))
    errors: list[DeadlineExceeded] = []

    def body(*, chttp_context):
        try:
            chttp_context.post(f"{BASE}/escrow", json={})
        except DeadlineExceeded as error:
            errors.append(error)
        chttp_context.persist("after")
        return chttp_context.post(f"{BASE}/escrow", json={"second": True}).status_code

    set_fault_hook(journal, crash_at("before-step", 3))
    with pytest.raises(Crash):
        resumable(journal, name="deadline-then-crash")(body)()
    set_fault_hook(journal, None)
    [oplog] = journal.list_open()
    first = journal.get(oplog.id).steps[0]
    assert first.state == "recorded"  # the deadline error was not committed before the crash
    assert set(refused) == {first.message_id} == {errors[0].message_id}

    # Resumed where the receiver is reachable: the first send is *not* resent under a new
    # id, nor under its own: its deadline, counted from its first attempt, has passed.
    later = make_journal(transport=httpx.WSGITransport(app=receiver),
                         retry=RetryPolicy(jitter=False, deadline=timedelta(minutes=5)))
    assert later.resume(oplog.id, force=True) == 201
    assert len(errors) == 2 and errors[1].message_id == first.message_id
    assert set(refused) == {first.message_id}
    first_after, _persist, second = later.get(oplog.id).steps
    assert first_after.state == "done" and first_after.outcome["error"]["type"].endswith("DeadlineExceeded")
    assert count_runs(receiver.engine, first.message_id) == 0
    assert [message_id for message_id, *_ in runs(receiver.engine)] == [second.message_id]
