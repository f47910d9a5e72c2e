"""A send's attempts are the journal's, not one process's (issue 23, items 9 and 11).

* ``DeadlineExceeded`` counts the attempts of every process that ran the send: each
  attempt after the intent commit's first is counted in the journal before it leaves.
* A ``Retry-After`` past the remaining deadline ends the send at once, instead of
  sleeping until the deadline only to give up then.
* Counting an attempt renews the lease in the same transaction, so a worker whose oplog
  an operator abandoned while it was retrying stops *before* its next attempt.
* A journal that goes away mid-function reaches the caller as ``JournalUnavailable``
  naming what was not recorded — here a SQLite journal whose file is moved away (the
  PostgreSQL server killed is in ``test_journal_outage.py``) — and ``resume`` picks
  the function up once it is back.

Real journals (SQLite and PostgreSQL), a real receiver; :class:`~tests.client.receiver.Front`
answers 503 in front of it as a proxy would; time is the fake clock's.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from chttp_client import (
    DeadlineExceeded,
    Journal,
    JournalUnavailable,
    OplogAbandonedError,
    RetryPolicy,
    resumable,
)
from chttp_client.testing import expire_leases
from tests.client.conftest import BASE, Crash
from tests.client.receiver import count_runs

POLICY = RetryPolicy(jitter=False, initial_backoff=1, max_backoff=10, deadline=timedelta(minutes=1))


def crashing_sleep(fake_clock, after: int):
    """The fake clock's sleep, crashing the process (Crash) at its ``after``-th call."""
    calls = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == after:
            raise Crash("killed while waiting to retry")
        fake_clock.sleep(seconds)

    return sleep


def test_deadline_exceeded_counts_the_attempts_of_every_process(make_journal, receiver, fake_clock):
    receiver.failures = 10_000
    first = make_journal(retry=POLICY, sleep=crashing_sleep(fake_clock, after=3))
    name = "tests.send_attempts.transfer"

    def transfer(*, chttp_context):
        return chttp_context.post(f"{BASE}/flaky", json={"amount": 5}).status_code

    with pytest.raises(Crash):
        resumable(first, name=name)(transfer)()
    [oplog] = first.list_open()
    [step] = first.get(oplog.id).steps
    assert receiver.seen[step.message_id] == 3 and step.attempts == 3   # in the journal

    expire_leases(first)
    second = make_journal(retry=POLICY)
    with pytest.raises(DeadlineExceeded) as caught:
        second.resume(oplog.id)
    sent = receiver.seen[step.message_id]
    assert caught.value.attempts == sent > 3
    assert f"after {sent} attempt(s), {sent - 3} of them in this process within 0:01:00" in str(caught.value)
    [step] = second.get(oplog.id).steps
    assert step.attempts == sent
    # Recorded as the send's final outcome: a replay raises the same count, sends nothing.
    with pytest.raises(DeadlineExceeded) as replayed:
        second.resume(oplog.id)
    assert replayed.value.attempts == sent and receiver.seen[step.message_id] == sent


def test_a_retry_after_past_the_deadline_ends_the_send_at_once(journal, receiver, fake_clock):
    receiver.failures, receiver.retry_after = 1, "3600"
    journal.retry = POLICY   # one minute of deadline; the receiver asks for an hour

    @resumable(journal, name="tests.send_attempts.later")
    def later(*, chttp_context):
        return chttp_context.post(f"{BASE}/flaky", json={}).status_code

    with pytest.raises(DeadlineExceeded, match="Retry-After 3600 s, past the deadline") as caught:
        later()
    assert fake_clock.sleeps == []                 # it did not sleep to the deadline
    assert list(receiver.seen.values()) == [1] and caught.value.attempts == 1


def test_a_retry_after_within_the_deadline_is_still_waited_for(journal, receiver, fake_clock):
    receiver.failures, receiver.retry_after = 1, "30"
    journal.retry = POLICY

    @resumable(journal, name="tests.send_attempts.soon")
    def soon(*, chttp_context):
        return chttp_context.post(f"{BASE}/flaky", json={}).status_code

    assert soon() == 201 and fake_clock.sleeps == [30.0]


def test_a_worker_retrying_a_send_stops_before_its_next_attempt_once_abandoned(
        make_journal, receiver, fake_clock):
    receiver.failures = 10_000
    operator = make_journal()
    sleeps = []

    def sleep(seconds: float) -> None:  # the operator acts while the worker waits to retry
        sleeps.append(seconds)
        if len(sleeps) == 2:
            [oplog] = operator.list_open()
            operator.abandon(oplog.id, "receiver decommissioned")
        fake_clock.sleep(seconds)

    worker = make_journal(retry=POLICY, sleep=sleep)

    @resumable(worker, name="tests.send_attempts.abandoned")
    def transfer(*, chttp_context):
        return chttp_context.post(f"{BASE}/flaky", json={}).status_code

    with pytest.raises(OplogAbandonedError, match="receiver decommissioned"):
        transfer()
    assert list(receiver.seen.values()) == [2]      # nothing after the abandonment


@pytest.fixture
def sqlite_journal(sqlite_url, receiver):
    journal = Journal(sqlite_url, transport=httpx.WSGITransport(app=receiver))
    yield journal
    journal.close()


def test_a_journal_moved_away_mid_function_is_journal_unavailable_then_resumed(sqlite_journal, receiver):
    journal = sqlite_journal
    path = Path(str(journal.engine.url.database))
    away = path.with_suffix(".away")
    swallowed = []

    def take_the_journal_away() -> int:
        if not swallowed and not away.exists():   # once: the resume runs it again (unrecorded)
            journal.engine.dispose()          # no pooled connection keeps the old file open
            os.rename(path, away)
            path.mkdir()                      # the path now opens as no database at all
        return 7

    @resumable(journal, name="tests.send_attempts.outage")
    def transfer(*, chttp_context):
        first = chttp_context.post(f"{BASE}/escrow", json={"n": 1}).json()["random number"]
        chttp_context.persist(take_the_journal_away)
        try:
            chttp_context.post(f"{BASE}/escrow", json={"n": 2})
        except JournalUnavailable as error:
            swallowed.append(error)
        chttp_context.persist(1)              # the run is over: this raises the same error
        return first

    with pytest.raises(JournalUnavailable) as caught:
        transfer()
    error = caught.value
    assert swallowed == [error]
    assert (error.step, error.created) == (3, True)
    assert error.unrecorded == f"step 3 (send POST {BASE}/escrow)"
    assert "OperationalError" in error.detail and "journal.resume(" in str(error)
    assert count_runs(receiver.engine) == 1           # the second send never left

    path.rmdir()
    os.rename(away, path)
    [oplog] = journal.list_open()
    assert oplog.id == error.oplog_id
    first = journal.resume(oplog.id)                  # no force: this process's run is over
    assert isinstance(first, int) and count_runs(receiver.engine) == 2
    steps = journal.get(oplog.id).steps
    assert [s.state for s in steps] == ["done", "done", "done", "done"]
    assert steps[1].outcome == {"value": 7}


def test_the_new_errors_pickle_and_replay_with_their_attributes():
    import pickle

    from chttp_client import codec

    unavailable = JournalUnavailable("o-1", None, "the oplog's first write", "OperationalError: gone",
                                     False)
    assert "never created and nothing was sent" in str(unavailable)
    deadline = DeadlineExceeded("m-1", "POST", "http://x/", "no definitive answer", 7)
    for error in (unavailable, deadline):
        for copy in (pickle.loads(pickle.dumps(error)),
                     codec.rebuild_exception(codec.exception_record(error))):
            assert type(copy) is type(error) and vars(copy) == vars(error) and str(copy) == str(error)
    # A DeadlineExceeded recorded before attempts were counted still replays.
    old = DeadlineExceeded("m-1", "POST", "http://x/", "no definitive answer")
    assert codec.rebuild_exception(
        {"type": "chttp_client.errors:DeadlineExceeded", "args": ["m-1", "POST", "http://x/", "d"]}
    ).attempts is None and old.attempts is None


def test_resume_all_raises_journal_unavailable_and_records_no_failure(sqlite_journal):
    """A journal gone during ``resume_all()`` is not one oplog's failure: it is raised, and
    nothing is recorded as the function's outcome; the next ``resume_all()`` finishes."""
    journal = sqlite_journal
    path = Path(str(journal.engine.url.database))
    away = path.with_suffix(".away")
    state = {"resuming": False, "taken": False}

    @resumable(journal, name="tests.send_attempts.resume_all_outage")
    def job(n, *, chttp_context):
        chttp_context.persist(n)
        chttp_context.checkpoint()
        if not state["resuming"]:
            raise Crash("stopped")
        if not state["taken"]:
            state["taken"] = True
            journal.engine.dispose()
            os.rename(path, away)
            path.mkdir()
        chttp_context.persist(n + 1)
        chttp_context.checkpoint()
        return n

    for n in (1, 2):
        with pytest.raises(Crash):
            job(n)
    expire_leases(journal)
    state["resuming"] = True
    with pytest.raises(JournalUnavailable, match="step 2 \\(persist value\\)"):
        journal.resume_all()
    path.rmdir()
    os.rename(away, path)
    assert [info.state for info in journal.list()] == ["open", "open"]   # no failure recorded
    assert sorted(outcome.value for outcome in journal.resume_all()) == [1, 2]
