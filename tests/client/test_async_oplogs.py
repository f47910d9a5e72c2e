"""Issue 23's oplog rules hold for ``async def`` functions too (items 7-9 and 11).

The step logic is one for ``def`` and ``async def`` (:mod:`chttp_client.steps`), so these
check the ported behaviours through an ``async def`` function and the awaited entry
points: a journal gone mid-function is :class:`JournalUnavailable` and ends the run
(even swallowed); an unreadable oplog of an async function is quarantined by
``resume_all()`` and ``resume_all_async()``; a send's attempts are counted in the
journal before they leave (across processes, and an operator's abandonment stops the
next one); a ``Retry-After`` past the deadline ends the send without waiting. Real
journals (SQLite and PostgreSQL), a real receiver on loopback (an ``AsyncClient`` cannot
use ``httpx.WSGITransport``), the fake clock of the sender tests.
"""

from __future__ import annotations

import asyncio
import os
import random
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from chttp_client import (
    DeadlineExceeded,
    Journal,
    JournalUnavailable,
    OplogAbandonedError,
    RetryPolicy,
    resumable,
)
from chttp_client.codec import CodecError
from chttp_client.testing import expire_leases
from chttp_core.schema import oplog_steps
from tests.client.conftest import Crash
from tests.client.receiver import count_runs, make_receiver
from tests.server.live import serve_in_thread

pytestmark = pytest.mark.slow

POLICY = RetryPolicy(jitter=False, initial_backoff=1, max_backoff=10, deadline=timedelta(minutes=1))


@pytest.fixture
def live(tmp_path):
    front = make_receiver(f"sqlite:///{tmp_path / 'receiver.db'}")
    with serve_in_thread(front, threads=4) as base:
        yield front, base
    front.engine.dispose()


def async_sleep(fake_clock, *, at: int = 0, then=None):
    """An ``async_sleep`` moving the fake clock; at its ``at``-th call it runs ``then()``."""
    calls: list[float] = []

    async def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == at and then is not None:
            then()
        fake_clock.sleep(seconds)

    return sleep


def test_an_async_function_whose_journal_goes_away_ends_with_journal_unavailable(sqlite_url, live):
    """Swallowed or not, the run is over: its next step raises the same error, the second
    send never leaves, and ``await resume_async`` (no force) finishes the function."""
    front, base = live
    journal = Journal(sqlite_url)
    path = Path(str(journal.engine.url.database))
    away = path.with_suffix(".away")
    swallowed = []

    def take_the_journal_away() -> int:
        if not away.exists() and not swallowed:
            journal.engine.dispose()
            os.rename(path, away)
            path.mkdir()
        return 7

    @resumable(journal, name="tests.async_oplogs.outage")
    async def transfer(*, chttp_context):
        first = (await chttp_context.post(f"{base}/escrow", json={"n": 1})).json()["random number"]
        await chttp_context.persist(take_the_journal_away)
        try:
            await chttp_context.post(f"{base}/escrow", json={"n": 2})
        except JournalUnavailable as error:
            swallowed.append(error)
        await chttp_context.persist(1)
        return first

    try:
        with pytest.raises(JournalUnavailable) as caught:
            asyncio.run(transfer())
        error = caught.value
        assert swallowed == [error]        # the same error, not the driver's on a lease release
        assert (error.step, error.created) == (3, True)
        assert error.unrecorded == f"step 3 (send POST {base}/escrow)"
        assert count_runs(front.engine) == 1

        path.rmdir()
        os.rename(away, path)
        [oplog] = journal.list_open()
        first = asyncio.run(journal.resume_async(oplog.id))
        assert isinstance(first, int) and count_runs(front.engine) == 2
        steps = journal.get(oplog.id).steps
        assert [s.state for s in steps] == ["done"] * 4 and steps[1].outcome == {"value": 7}
    finally:
        journal.close()


def test_an_unreadable_async_oplog_is_quarantined_by_both_resume_alls(db_url):
    with Journal(db_url, lease=timedelta(0)) as journal:
        stop = [True]

        @resumable(journal, name="tests.async_oplogs.job")
        async def job(n, *, chttp_context):
            token = await chttp_context.persist(random.random)
            await chttp_context.checkpoint()
            if stop[0]:
                raise Crash("stopped")
            return [n, token]

        with pytest.raises(Crash):
            asyncio.run(job(1))
        stop[0] = False
        [oplog] = journal.list_open()
        with journal.engine.begin() as connection:
            good = connection.execute(select(oplog_steps.c.outcome)
                                      .where(oplog_steps.c.oplog_id == oplog.id)).scalar_one()
            connection.execute(update(oplog_steps).where(oplog_steps.c.oplog_id == oplog.id)
                               .values(outcome='{"valu": 1}'))

        for outcomes in (journal.resume_all(), asyncio.run(journal.resume_all_async())):
            [outcome] = outcomes
            assert (outcome.oplog_id, outcome.status) == (oplog.id, "unreadable")
            assert isinstance(outcome.error, CodecError) and f"oplog {oplog.id} step 1" in str(outcome.error)
        with pytest.raises(CodecError):
            asyncio.run(journal.resume_async(oplog.id))
        [left] = journal.list_open()
        assert (left.id, left.resume_attempts) == (oplog.id, 0)   # untouched: no lease, no resume

        with journal.engine.begin() as connection:   # the row fixed: it resumes like any other
            connection.execute(update(oplog_steps).where(oplog_steps.c.oplog_id == oplog.id)
                               .values(outcome=good))
        [outcome] = asyncio.run(journal.resume_all_async())
        assert outcome.status == "done" and outcome.value[0] == 1


def test_an_async_send_counts_the_attempts_of_every_process(db_url, live, fake_clock):
    front, base = live
    front.failures = 10_000

    def crash() -> None:
        raise Crash("killed while waiting to retry")

    first = Journal(db_url, retry=POLICY, clock=fake_clock,
                    async_sleep=async_sleep(fake_clock, at=3, then=crash))

    @resumable(first, name="tests.async_oplogs.attempts")
    async def transfer(*, chttp_context):
        return (await chttp_context.post(f"{base}/flaky", json={"amount": 5})).status_code

    try:
        with pytest.raises(Crash):
            asyncio.run(transfer())
        [oplog] = first.list_open()
        [step] = first.get(oplog.id).steps
        assert front.seen[step.message_id] == 3 and step.attempts == 3
        expire_leases(first)
    finally:
        first.close()

    with Journal(db_url, retry=POLICY, clock=fake_clock, async_sleep=async_sleep(fake_clock)) as second:
        with pytest.raises(DeadlineExceeded) as caught:
            asyncio.run(second.resume_async(oplog.id))
        sent = front.seen[step.message_id]
        assert caught.value.attempts == sent > 3
        assert f"after {sent} attempt(s), {sent - 3} of them in this process" in str(caught.value)
        assert second.get(oplog.id).steps[0].attempts == sent


def test_an_async_send_given_a_retry_after_past_its_deadline_ends_at_once(db_url, live, fake_clock):
    front, base = live
    front.failures, front.retry_after = 1, "3600"
    with Journal(db_url, retry=POLICY, clock=fake_clock, async_sleep=async_sleep(fake_clock)) as journal:
        @resumable(journal, name="tests.async_oplogs.later")
        async def later(*, chttp_context):
            return (await chttp_context.post(f"{base}/flaky", json={})).status_code

        with pytest.raises(DeadlineExceeded, match="Retry-After 3600 s, past the deadline") as caught:
            asyncio.run(later())
    assert fake_clock.sleeps == [] and caught.value.attempts == 1
    assert list(front.seen.values()) == [1]


def test_an_async_worker_stops_before_its_next_attempt_once_abandoned(db_url, live, fake_clock):
    front, base = live
    front.failures = 10_000
    with Journal(db_url) as operator, Journal(db_url, retry=POLICY, clock=fake_clock) as worker:
        def abandon() -> None:   # the operator acts while the worker waits to retry
            [oplog] = operator.list_open()
            operator.abandon(oplog.id, "receiver decommissioned")

        worker.async_sleep = async_sleep(fake_clock, at=2, then=abandon)

        @resumable(worker, name="tests.async_oplogs.abandoned")
        async def transfer(*, chttp_context):
            return (await chttp_context.post(f"{base}/flaky", json={})).status_code

        with pytest.raises(OplogAbandonedError, match="receiver decommissioned"):
            asyncio.run(transfer())
    assert list(front.seen.values()) == [2]        # nothing after the abandonment
