"""Short leases held by a heartbeat for a whole run (issue 23, item 10).

A lease is a few heartbeats long (chttp_client.lease_timing) and renewed in real time
for as long as a run lives (chttp_client.heartbeat): a live run keeps its oplog through
a slow receiver, a slow step of its own and a long backoff sleep, each several leases
long, while a worker SIGKILLed "on another host" (a host name of its own, so that its
pid cannot be checked here) is taken over once its short lease lapsed, resending under
the same message id — and its acknowledgement claim lapses as soon, while a live
process keeps the claims of its DELETEs in hand however long its backlog.

Real time is needed here (the heartbeat is paced by it, the lease runs on the
database's clock): leases of a second, heartbeats of 0.2 s, and waits bounded only
against hanging. No assertion on how long anything took.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from chttp_client import Journal, JournalError, OplogBusyError, RetryPolicy, resumable
from chttp_client.leases import owner_is_gone
from chttp_core.schema import oplogs
from tests.client import other_host_app
from tests.client.receiver import count_runs, make_receiver, runs
from tests.server.live import REPO_ROOT, serve_in_thread

pytestmark = pytest.mark.slow

HEARTBEAT = other_host_app.HEARTBEAT
LEASE = other_host_app.LEASE
#: How long each slow thing lasts: several leases.
SLOW = 3 * LEASE.total_seconds()


class Lingering:
    """The receiver, answering ``POST /linger`` (run as ``/escrow``) only :data:`SLOW`
    seconds after its handler committed: a slow network or a slow proxy."""

    def __init__(self, front) -> None:
        self.front = front

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != "/linger":
            return self.front(environ, start_response)
        environ["PATH_INFO"] = "/escrow"
        body = b"".join(self.front(environ, start_response))
        time.sleep(SLOW)
        return [body]


@pytest.fixture
def live_receiver(tmp_path):
    front = make_receiver(f"sqlite:///{tmp_path / 'receiver.db'}")
    with serve_in_thread(Lingering(front)) as base:
        yield front, base
    front.engine.dispose()


class Taker(threading.Thread):
    """Another process's resume, tried every 50 ms on every open oplog while a live run
    goes on: it must be refused every time."""

    def __init__(self, db_url: str) -> None:
        super().__init__(daemon=True)
        self.journal = Journal(db_url, heartbeat=HEARTBEAT, lease=LEASE)
        self.stop = threading.Event()
        self.refused = 0
        self.taken: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for info in self.journal.list_open():
                try:
                    self.journal.take_lease(info.id)
                except OplogBusyError:
                    self.refused += 1
                else:
                    self.taken.append(info.id)
            time.sleep(0.05)

    def __enter__(self) -> Taker:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.join(60)
        self.journal.close()


def short_journal(db_url: str, **options) -> Journal:
    return Journal(db_url, heartbeat=HEARTBEAT, lease=LEASE, **options)


def test_a_live_run_keeps_its_lease_through_a_slow_receiver(db_url, live_receiver):
    front, base = live_receiver
    with short_journal(db_url) as journal, Taker(db_url) as taker:
        @resumable(journal)
        def transfer(*, chttp_context):
            return chttp_context.post(f"{base}/linger", json={"amount": 1}).status_code

        assert transfer() == 201     # never OplogTakenOverError: the run kept its lease
    assert taker.refused > 0 and taker.taken == []
    assert count_runs(front.engine) == 1


def test_a_live_run_keeps_its_lease_through_a_slow_step_and_a_backoff_sleep(db_url, live_receiver):
    """Between two commits (its own slow work) and between two attempts (Retry-After
    several leases long, slept for real): renewed all along, not only during sends."""
    front, base = live_receiver
    front.failures, front.status, front.retry_after = 1, 503, f"{SLOW:.0f}"
    with short_journal(db_url, retry=RetryPolicy(jitter=False)) as journal, Taker(db_url) as taker:
        @resumable(journal)
        def transfer(*, chttp_context):
            first = chttp_context.post(f"{base}/escrow", json={"amount": 1}).status_code
            time.sleep(SLOW)
            return first, chttp_context.post(f"{base}/flaky", json={}).status_code

        assert transfer() == (201, 201)
    assert taker.refused > 0 and taker.taken == []
    assert sum(front.seen.values()) == 2          # /flaky: refused once, then answered
    assert count_runs(front.engine) == 2


def test_an_async_run_keeps_its_lease_through_a_slow_step(db_url, live_receiver):
    front, base = live_receiver
    with short_journal(db_url) as journal, Taker(db_url) as taker:
        @resumable(journal)
        async def transfer(*, chttp_context):
            first = (await chttp_context.post(f"{base}/escrow", json={"amount": 1})).status_code
            await asyncio.sleep(SLOW)
            return first, (await chttp_context.post(f"{base}/linger", json={})).status_code

        assert asyncio.run(transfer()) == (201, 201)
    assert taker.refused > 0 and taker.taken == []
    assert count_runs(front.engine) == 2


def lease_of(journal: Journal, oplog_id: str) -> tuple[str, datetime]:
    with journal.engine.connect() as connection:
        owner, expires = connection.execute(
            select(oplogs.c.lease_owner, oplogs.c.lease_expires_at).where(oplogs.c.id == oplog_id)).one()
    return owner, expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)


@pytest.mark.parametrize("point", ["send-recorded", "send-answered", "checkpoint"])
def test_a_worker_killed_on_another_host_is_taken_over_after_its_short_lease(db_url, live_receiver,
                                                                               point):
    front, base = live_receiver
    child = subprocess.run([sys.executable, "-m", "tests.client.other_host_app", db_url, base, point],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    killed = time.monotonic()
    with short_journal(db_url) as journal:
        [oplog] = journal.list_open()
        [*_, sent] = journal.get(oplog.id).steps
        owner, expires = lease_of(journal, oplog.id)
        assert owner.startswith(f"{other_host_app.OTHER_HOST}/")
        assert not owner_is_gone(owner)       # another host's pid: only the lease can end
        refused = 0
        while True:
            [outcome] = journal.resume_all(timeout=None)
            if outcome.status == "done":
                took_over = datetime.now(timezone.utc)
                break
            assert outcome.status == "busy", outcome
            assert time.monotonic() < killed + 120, "never taken over"
            refused += 1
            time.sleep(0.05)
        print(f"\n{point}: taken over {time.monotonic() - killed:.2f} s after the kill "
              f"(lease {LEASE.total_seconds()} s), refused {refused} times before")
        # Not before the dead worker's lease ended, by the database's clock (this
        # machine's: SQLite's file, the test's PostgreSQL server).
        assert took_over >= expires
        # The acknowledgement: claimed by the dead worker (checkpoint) or by the resume's
        # own commit; sent once, once its claim lapsed.
        deadline = time.monotonic() + 120
        while journal.unacknowledged([oplog.id]):
            assert time.monotonic() < deadline, "the acknowledgement claim never lapsed"
            journal.acknowledge_pending()
            journal.wait_for_acknowledgements()
            time.sleep(0.05)
    # The handler ran once, for the id the dead worker recorded, resent under it.
    [(message_id, path, _body)] = runs(front.engine)
    assert (message_id, path) == (sent.message_id, "/escrow")
    assert sum(front.deletes.values()) == 1


def test_the_lease_is_a_small_multiple_of_the_heartbeat(sqlite_url):
    with Journal(sqlite_url) as journal:
        assert (journal.heartbeat_interval, journal.lease) == (timedelta(seconds=5), timedelta(seconds=15))
    with Journal(sqlite_url, heartbeat=timedelta(seconds=2)) as journal:
        assert journal.lease == timedelta(seconds=6)
    with Journal(sqlite_url, heartbeat=timedelta(seconds=2), lease=timedelta(seconds=4)) as journal:
        assert journal.lease == timedelta(seconds=4)
    with Journal(sqlite_url, lease=timedelta(0)) as journal:   # free at once (tests)
        assert journal.lease == timedelta(0)
    with pytest.raises(JournalError, match=r"shorter than 2 heartbeats .*heartbeat=0:00:05"):
        Journal(sqlite_url, lease=timedelta(seconds=9))
    with pytest.raises(JournalError, match="heartbeat must be positive"):
        Journal(sqlite_url, heartbeat=timedelta(0))
    with pytest.raises(JournalError, match="must not be negative"):
        Journal(sqlite_url, lease=timedelta(seconds=-1))


class SlowDeletes:
    """The receiver, taking :data:`SLOW` seconds over each acknowledgement (DELETE)."""

    def __init__(self, front) -> None:
        self.front = front

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "DELETE":
            time.sleep(SLOW)
        return self.front(environ, start_response)


def test_a_live_process_keeps_its_acknowledgement_claims_through_a_backlog(db_url, tmp_path):
    """Two DELETEs in hand for several leases (one slow, one queued behind it), then
    done with their marks waiting for the next commit for several leases more: another
    process's acknowledge_pending() never claims them, so each is sent once."""
    front = make_receiver(f"sqlite:///{tmp_path / 'receiver.db'}")
    with serve_in_thread(SlowDeletes(front)) as base, short_journal(db_url) as journal, \
            short_journal(db_url) as other:
        @resumable(journal)
        def transfer(*, chttp_context):
            return chttp_context.post(f"{base}/escrow", json={}).status_code

        assert (transfer(), transfer()) == (201, 201)   # their DELETEs queued
        oplog_ids = [info.id for info in journal.list()]
        stolen = 0
        give_up = time.monotonic() + 120
        while not journal.acknowledger.join(0.05):     # the DELETEs in hand
            assert time.monotonic() < give_up, "the DELETEs never ended"
            stolen += other.acknowledge_pending()
        done = time.monotonic()
        while time.monotonic() < done + SLOW:          # done, their marks not yet written
            stolen += other.acknowledge_pending()
            time.sleep(0.05)
        journal.wait_for_acknowledgements()
        assert journal.unacknowledged(oplog_ids) == set()
        assert stolen == 0 and other.acknowledge_pending() == 0
    front.engine.dispose()
    assert sorted(front.deletes.values()) == [1, 1]


def test_a_renewal_by_the_heartbeat_is_not_progress(db_url):
    """A function that crash-loops after a slow step is still abandoned after
    max_resume_attempts: the heartbeat keeps its lease but does not reset the count."""
    from chttp_client.leases import new_owner
    from chttp_client.testing import expire_leases, set_fault_hook
    from tests.client.conftest import Crash, crash_at

    with short_journal(db_url) as journal:
        @resumable(journal)
        def transfer(*, chttp_context):
            return chttp_context.post("http://receiver.test/escrow", json={}).status_code

        set_fault_hook(journal, crash_at("send-recorded", 1))
        with pytest.raises(Crash):
            transfer()
        [oplog] = journal.list_open()
        expire_leases(journal, oplog.id)
        owner = new_owner()
        assert journal.store.take_lease(oplog.id, owner, now=journal.clock(), lease=journal.lease,
                                        count_attempt=True) == 1
        _, taken_until = lease_of(journal, oplog.id)
        with journal.heartbeat.hold(oplog.id, owner):
            give_up = time.monotonic() + 60
            while lease_of(journal, oplog.id)[1] <= taken_until:   # renewed at least once
                assert time.monotonic() < give_up, "never renewed"
                time.sleep(0.05)
        with journal.engine.connect() as connection:
            attempts = connection.execute(select(oplogs.c.resume_attempts)
                                          .where(oplogs.c.id == oplog.id)).scalar_one()
        assert attempts == 1
