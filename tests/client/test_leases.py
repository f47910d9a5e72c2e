"""Leases that hold through long attempts, and a takeover the original caller learns of.

Issue 15: a lease renewed only between attempts lapses during one long attempt, and
another process takes a live run's oplog over. A heartbeat renews it while a send is in
flight (chttp_client.heartbeat). When a takeover does happen (the owner looked dead),
the original caller gets OplogTakenOverError saying how to get the result.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import select

from chttp_client import Journal, OplogBusyError, OplogTakenOverError, RetryPolicy, resumable
from chttp_core.schema import oplogs
from tests.client.conftest import BASE
from tests.client.receiver import count_runs

LEASE = timedelta(minutes=10)


class DuringAttempt(httpx.BaseTransport):
    """The real receiver; ``during(request)`` runs while the first POST is in flight."""

    def __init__(self, app, during) -> None:
        self.inner = httpx.WSGITransport(app=app)
        self.during = during
        self.done = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and not self.done:
            self.done = True
            self.during(request)
        return self.inner.handle_request(request)


def lease_expires_at(journal: Journal, oplog_id: str) -> datetime | None:
    with journal.engine.connect() as connection:
        moment = connection.execute(
            select(oplogs.c.lease_expires_at).where(oplogs.c.id == oplog_id)).scalar_one()
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def wait_until(condition, what: str) -> None:
    """Wait for a background thread's effect; the bound is only against hanging for ever."""
    give_up = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < give_up, f"never happened: {what}"
        time.sleep(0.01)


def let_time_pass(journal: Journal, oplog_id: str, by: timedelta) -> datetime:
    """``by`` passes for the lease of ``oplog_id`` by the database's clock: its deadline
    comes ``by`` closer (leases run by that clock, not the journal's fake one). Returns
    the moved deadline."""
    moved = lease_expires_at(journal, oplog_id) - by
    with journal.engine.begin() as connection:
        connection.execute(oplogs.update().where(oplogs.c.id == oplog_id)
                           .values(lease_expires_at=moved))
    return moved


def test_a_heartbeat_keeps_the_lease_through_a_long_attempt(db_url, receiver, fake_clock):
    seen: dict[str, object] = {}

    def during(request: httpx.Request) -> None:
        [oplog] = journal.list_open()
        # The attempt takes 8 minutes, then 8 more: longer than the 10-minute lease. The
        # database's clock runs the lease (moved here); the heartbeat renews it in real
        # time, whatever the journal's (fake) clock says.
        for _ in range(2):
            moved = let_time_pass(journal, oplog.id, timedelta(minutes=8))
            fake_clock.now += timedelta(minutes=8)  # after: the renewal must follow the move
            wait_until(lambda: lease_expires_at(journal, oplog.id) >= moved + LEASE / 2,
                       "the heartbeat renewed the lease")
        try:
            other.take_lease(oplog.id)  # another process's resume_all, 16 minutes in
        except OplogBusyError as error:
            seen["other"] = error
        else:
            seen["other"] = "took the lease"

    journal = Journal(db_url, transport=DuringAttempt(receiver, during), clock=fake_clock,
                      sleep=fake_clock.sleep, lease=LEASE, retry=RetryPolicy(jitter=False))
    other = Journal(db_url, transport=httpx.WSGITransport(app=receiver), clock=fake_clock, lease=LEASE)
    try:
        @resumable(journal)
        def transfer(*, chttp_context):
            return chttp_context.post(f"{BASE}/escrow", json={"amount": 1}).status_code

        assert transfer() == 201  # no OplogBusyError: the live run kept its oplog
        assert isinstance(seen["other"], OplogBusyError)
        assert not isinstance(seen["other"], OplogTakenOverError)
        assert count_runs(receiver.engine) == 1
    finally:
        journal.close()
        other.close()


def test_the_original_caller_learns_its_oplog_completed_elsewhere(db_url, receiver, fake_clock):
    results: list[object] = []

    def during(request: httpx.Request) -> None:
        # This process stalls; another one decides it is gone and finishes the oplog.
        [oplog] = journal.list_open()
        results.append(other.resume(oplog.id, force=True))

    journal = Journal(db_url, transport=DuringAttempt(receiver, during), clock=fake_clock,
                      sleep=fake_clock.sleep, lease=LEASE, retry=RetryPolicy(jitter=False))
    other = Journal(db_url, transport=httpx.WSGITransport(app=receiver), clock=fake_clock, lease=LEASE)
    try:
        @resumable(journal)
        def transfer(*, chttp_context):
            return chttp_context.post(f"{BASE}/escrow", json={"amount": 1}).json()["random number"]

        with pytest.raises(OplogTakenOverError) as caught:
            transfer()
        [oplog] = journal.list()
        error = caught.value
        assert isinstance(error, OplogBusyError)  # what callers caught before still matches
        assert (error.oplog_id, error.state) == (oplog.id, "done")
        assert "completed there" in str(error) and f"journal.resume({oplog.id!r})" in str(error)
        # … and that is how it gets the result the other process recorded.
        assert journal.resume(oplog.id) == results[0]
        assert count_runs(receiver.engine) == 1  # one message, whoever sent it
    finally:
        journal.close()
        other.close()


def test_the_heartbeat_thread_stops_with_the_journal(db_url, receiver):
    journal = Journal(db_url, transport=httpx.WSGITransport(app=receiver), lease=LEASE)

    @resumable(journal)
    def transfer(*, chttp_context):
        return chttp_context.post(f"{BASE}/escrow", json={}).status_code

    def heartbeats() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "chttp-lease-heartbeat" and t.is_alive())

    before = heartbeats()
    assert transfer() == 201
    assert heartbeats() == before + 1
    journal.close()
    assert heartbeats() == before


def test_a_lease_is_stamped_and_read_with_the_databases_clock(db_url, receiver):
    """Two journals a day apart (their hosts' clocks) agree on a lease: the database's.

    Stamped with the owner's clock, the lease of an owner a day behind would be free at
    once; read with the taker's clock, every lease would be free to a taker a day ahead.
    """
    day = timedelta(days=1)
    seen: dict[str, object] = {}

    def during(request: httpx.Request) -> None:
        [oplog] = behind.list_open()
        seen["deadline"], seen["at"] = lease_expires_at(behind, oplog.id), datetime.now(timezone.utc)
        try:
            ahead.take_lease(oplog.id)
        except OplogBusyError as error:
            seen["ahead"] = error
        else:
            seen["ahead"] = "took a live owner's lease"

    behind = Journal(db_url, transport=DuringAttempt(receiver, during), lease=LEASE,
                     clock=lambda: datetime.now(timezone.utc) - day)
    ahead = Journal(db_url, transport=httpx.WSGITransport(app=receiver), lease=LEASE,
                    clock=lambda: datetime.now(timezone.utc) + day)
    try:
        @resumable(behind)
        def transfer(*, chttp_context):
            return chttp_context.post(f"{BASE}/escrow", json={"amount": 1}).status_code

        before = datetime.now(timezone.utc)
        assert transfer() == 201  # never taken over
        assert isinstance(seen["ahead"], OplogBusyError)
        assert not isinstance(seen["ahead"], OplogTakenOverError)
        # The deadline: this machine's (the database's) now plus the lease, whatever the
        # owner's clock said (SQLite keeps milliseconds, hence the lower bound's slack).
        deadline, at = seen["deadline"], seen["at"]
        assert before + LEASE - timedelta(milliseconds=1) <= deadline <= at + LEASE
        assert count_runs(receiver.engine) == 1
    finally:
        behind.close()
        ahead.close()


def test_a_zombie_owner_is_gone():
    """A killed process nobody reaped yet (a SIGKILLed Celery worker's pool child,
    reparented to a PID 1 that reaps late or never) answers ``kill(pid, 0)`` but will
    never renew its lease: it counts as gone, so a redelivered task resumes at once."""
    import os
    import signal
    import socket
    import subprocess

    from chttp_client.leases import owner_is_gone

    child = subprocess.Popen(["sleep", "60"])
    try:
        owner = f"{socket.gethostname()}/{child.pid}/abc"
        assert not owner_is_gone(owner)                       # running: alive
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not owner_is_gone(owner):                       # a zombie until we reap it
            assert time.monotonic() < deadline, "a zombie still counts as alive"
            time.sleep(0.01)
        with open(f"/proc/{child.pid}/stat", "rb") as stat:
            assert stat.read().rpartition(b")")[2].split()[0] == b"Z"   # not reaped yet
    finally:
        child.kill()
        child.wait()
