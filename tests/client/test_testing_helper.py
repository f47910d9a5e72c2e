"""chttp_client.testing.check_crash_resume against a real receiver."""

from __future__ import annotations

import random
import secrets
import time

import pytest

from chttp_client import MessageIdReusedError, resumable
from chttp_client.testing import CrashResumeFailure, check_crash_resume
from tests.client.conftest import BASE
from tests.client.receiver import count_runs, runs


def test_the_seed_example_survives_a_crash_at_every_step(journal, receiver):
    @resumable(journal)
    def start_transferring_foo(escrow_url, amount, *, chttp_context):
        local = chttp_context.persist(secrets.randbelow, 10**6)
        response = chttp_context.post(escrow_url, json={"amount": amount})
        return local + response.json()["random number"]

    report = check_crash_resume(start_transferring_foo, f"{BASE}/escrow", 5)
    assert [(c.step, c.point) for c in report.cases] == [
        (1, "before-step"), (1, "after-step"),
        (2, "before-step"), (2, "send-recorded"), (2, "send-answered"), (2, "after-step"),
    ]
    assert report.failures == []
    # Every crashed run resent the reference id: the escrow handler ran once in all.
    assert count_runs(receiver.engine) == 1


def test_persisted_randomness_in_bodies_and_several_sends_pass(journal, receiver):
    @resumable(journal)
    def f(*, chttp_context):
        nonce = chttp_context.persist(random.random)
        first = chttp_context.post(f"{BASE}/escrow", json={"nonce": nonce}).json()
        when = chttp_context.now()
        chttp_context.put(f"{BASE}/escrow", json={"after": first["random number"], "at": when.isoformat()})
        return first["random number"]

    report = check_crash_resume(f)
    assert len(report.cases) == 2 + 4 + 2 + 4
    assert count_runs(receiver.engine) == 2


def test_unpersisted_random_in_a_body_is_caught_naming_the_step(journal):
    @resumable(journal)
    def buggy(*, chttp_context):
        chttp_context.persist(secrets.randbelow, 100)
        chttp_context.post(f"{BASE}/escrow", json={"n": random.random()})  # forgot persist()
        return "done"

    with pytest.raises(CrashResumeFailure) as caught:
        check_crash_resume(buggy)
    assert caught.value.step == 2
    assert "step 2" in str(caught.value) and "POST http://receiver.test/escrow" in str(caught.value)


def test_unpersisted_time_in_a_url_is_caught(journal):
    @resumable(journal)
    def buggy(*, chttp_context):
        chttp_context.post(f"{BASE}/escrow?t={time.time_ns()}", json={})

    report = check_crash_resume(buggy, raise_on_failure=False)
    assert report.failures and {case.step for case in report.failures} == {1}


def test_recorded_exception_outcomes_compare_equal(journal, receiver):
    @resumable(journal)
    def f(*, chttp_context):
        status = chttp_context.post(f"{BASE}/status/409", json={}).status_code
        raise ValueError("conflict", status)

    report = check_crash_resume(f)
    assert report.outcome["error"]["args"] == ["conflict", 409]
    assert [r[1] for r in runs(receiver.engine)] == ["/status/409"]


def test_needs_a_resumable_function():
    with pytest.raises(TypeError):
        check_crash_resume(lambda: None)


def test_protocol_errors_are_outcomes_too(journal):
    @resumable(journal)
    def f(*, chttp_context):
        try:
            chttp_context.post(f"{BASE}/escrow", json={})
        except MessageIdReusedError:
            return "reused"
        return "fine"

    assert check_crash_resume(f).outcome == {"value": "fine"}


def test_works_against_a_live_server(db_url, tmp_path):
    from chttp_client import Journal
    from tests.client.receiver import make_receiver
    from tests.server.live import serve_in_thread

    front = make_receiver(f"sqlite:///{tmp_path / 'live-receiver.db'}")
    try:
        with serve_in_thread(front) as base, Journal(db_url) as journal:
            @resumable(journal)
            def start_transferring_foo(escrow_url, amount, *, chttp_context):
                local = chttp_context.persist(secrets.randbelow, 10**6)
                response = chttp_context.post(escrow_url, json={"amount": amount})
                return local + response.json()["random number"]

            report = check_crash_resume(start_transferring_foo, f"{base}/escrow", 7)
            assert len(report.cases) == 6 and report.failures == []
        assert count_runs(front.engine) == 1
    finally:
        front.engine.dispose()


def test_an_unpersisted_random_header_is_caught(journal):
    @resumable(journal)
    def buggy(*, chttp_context):
        chttp_context.post(f"{BASE}/escrow", json={}, headers={"X-Request-Nonce": str(random.random())})

    with pytest.raises(CrashResumeFailure) as caught:
        check_crash_resume(buggy)
    assert caught.value.step == 1 and "x-request-nonce" in str(caught.value)


def test_persisted_headers_pass(journal, receiver):
    @resumable(journal)
    def fine(*, chttp_context):
        nonce = chttp_context.persist(random.random)
        return chttp_context.post(f"{BASE}/escrow", json={}, headers={"X-Request-Nonce": str(nonce)}).status_code

    assert check_crash_resume(fine).outcome == {"value": 201}
