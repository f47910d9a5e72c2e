"""The journal's PostgreSQL server killed in the middle of a function (issue 15).

A crash of the journal's database (``pg_ctl stop -m immediate``: no shutdown checkpoint)
between two sends fails the run at its next journal write with ``JournalUnavailable``
naming the step that was not recorded (issue 23 item 11, not the driver's raw
``OperationalError``); once the server is back, the
oplog resumes correctly: the first send is resent under its recorded id (the receiver
replays, its handler ran once) and the function ends with the recorded values.
"""

from __future__ import annotations

import random
from typing import Iterator

import httpx
import pytest
from sqlalchemy.exc import DBAPIError

from chttp_client import Journal, JournalUnavailable, UnknownOplogError, resumable
from chttp_server.testing import PostgresCluster
from tests.client.conftest import BASE
from tests.client.receiver import count_runs, runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(settings={"fsync": "off", "full_page_writes": "off"})
    cluster.start()
    yield cluster
    cluster.destroy()


def test_a_journal_whose_database_crashed_mid_function_resumes_once_it_is_back(cluster, receiver):
    url = cluster.create_database("journal_outage")
    journal = Journal(url, transport=httpx.WSGITransport(app=receiver))
    crashed = []

    def crash_the_journal_database() -> float:
        if not crashed:
            crashed.append(True)
            cluster.stop("immediate")
        return random.random()

    try:
        @resumable(journal)
        def transfer(*, chttp_context):
            first = chttp_context.post(f"{BASE}/escrow", json={"n": 1}).json()["random number"]
            nonce = chttp_context.persist(crash_the_journal_database)
            second = chttp_context.post(f"{BASE}/escrow", json={"nonce": nonce}).json()["random number"]
            return [first, nonce, second]

        with pytest.raises(JournalUnavailable) as caught:  # the second send's intent commit
            transfer()
        assert isinstance(caught.value.__cause__, DBAPIError)   # the driver's error, as the cause
        assert (caught.value.step, caught.value.created) == (3, True)
        assert caught.value.unrecorded == f"step 3 (send POST {BASE}/escrow)"
        assert count_runs(receiver.engine) == 1  # only the first send left the process

        cluster.start()
        [oplog] = journal.list_open()
        [recorded] = journal.get(oplog.id).steps  # the first send, its answer never committed
        assert recorded.state == "recorded"
        first, nonce, second = journal.resume(oplog.id)   # no force: the failed run is over
        steps = journal.get(oplog.id).steps
        assert [s.state for s in steps] == ["done", "done", "done"]
        assert steps[0].message_id == recorded.message_id
        assert steps[1].outcome == {"value": nonce}
        # The receiver ran each message once: the resent first one was replayed.
        assert [r[0] for r in runs(receiver.engine)] == [steps[0].message_id, steps[2].message_id]
        assert isinstance(first, int) and isinstance(second, int)
    finally:
        journal.close()
        if not cluster.running:
            cluster.start()


def test_a_journal_gone_while_a_send_retries_stops_before_the_next_attempt(cluster, receiver):
    """The attempt count is written before each retry: with the journal gone the send
    stops there (JournalUnavailable naming the attempt), and resumes once it is back."""
    url = cluster.create_database("journal_outage_retry")
    receiver.failures = 2
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            cluster.stop("immediate")

    journal = Journal(url, transport=httpx.WSGITransport(app=receiver), sleep=sleep)
    try:
        @resumable(journal)
        def transfer(*, chttp_context):
            return chttp_context.post(f"{BASE}/flaky", json={"n": 1}).status_code

        with pytest.raises(JournalUnavailable) as caught:
            transfer()
        assert (caught.value.step, caught.value.unrecorded) == (1, "attempt 2 of step 1")
        assert list(receiver.seen.values()) == [1]          # the second attempt never left
        cluster.start()
        [oplog] = journal.list_open()
        assert journal.resume(oplog.id) == 201
        assert list(receiver.seen.values()) == [3] and count_runs(receiver.engine) == 1
        assert journal.get(oplog.id).steps[0].attempts == 3
    finally:
        journal.close()
        if not cluster.running:
            cluster.start()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_resume_all_with_its_database_down_raises_journal_unavailable(cluster, receiver, kind):
    """Found on the Patroni cluster (issue 21): mid-switchover every node refused and
    ``resume_all()`` raised psycopg2's raw OperationalError (from the pending
    acknowledgements' claim). It is the library's JournalUnavailable, with the driver's
    error as its cause, and the next call once the database is back resumes as ever."""
    import asyncio

    url = cluster.create_database(f"journal_resume_all_down_{kind}")
    journal = Journal(url, transport=httpx.WSGITransport(app=receiver))
    journal.ensure_schema()
    cluster.stop("immediate")
    try:
        with pytest.raises(JournalUnavailable) as caught:
            if kind == "sync":
                journal.resume_all()
            else:
                asyncio.run(journal.resume_all_async())
        assert isinstance(caught.value.__cause__, DBAPIError)
        assert str(caught.value).startswith("the journal database is unavailable: resume_all()")
    finally:
        cluster.start()
    assert journal.resume_all() == []
    journal.close()


@pytest.mark.parametrize("lost_at", ["statement", "commit"])
def test_a_first_write_lost_at_its_commit_says_the_oplog_may_exist(cluster, lost_at):
    """Found on the Patroni sender storm (issue 21): the oplog's first write failing at
    its COMMIT was reported ``created=False`` — "call the function again" — though the
    server may have committed it and lost only the answer; a caller following that
    advice could run the function twice. A failure before the COMMIT is certain (False);
    at the COMMIT it is unknown (None), and ``resume`` settles it: here the server died
    before the COMMIT reached it, so the oplog does not exist (UnknownOplogError) and
    calling again is then safe."""
    from sqlalchemy import event

    url = cluster.create_database(f"journal_first_write_{lost_at}")
    journal = Journal(url)
    journal.ensure_schema()
    stopped: list[bool] = []

    def stop_before_statement(connection, cursor, statement, *args) -> None:
        if not stopped and statement.lstrip().upper().startswith("INSERT INTO CHTTP_OPLOGS "):
            stopped.append(True)
            cluster.stop("immediate")

    def stop_before_commit(connection) -> None:
        if not stopped:
            stopped.append(True)
            cluster.stop("immediate")

    if lost_at == "statement":
        event.listen(journal.engine, "before_cursor_execute", stop_before_statement)
    else:
        event.listen(journal.engine, "commit", stop_before_commit)
    try:
        @resumable(journal)
        def draw(*, chttp_context):
            return chttp_context.persist(random.random)

        with pytest.raises(JournalUnavailable) as caught:
            draw()
        assert stopped and isinstance(caught.value.__cause__, DBAPIError)
        if lost_at == "statement":
            assert caught.value.created is False
            assert str(caught.value).endswith("nothing was sent: call the function again")
        else:
            assert caught.value.created is None
            assert f"journal.resume({caught.value.oplog_id!r}) finishes it if it exists" in str(
                caught.value)
        cluster.start()
        with pytest.raises(UnknownOplogError) as unknown:
            journal.resume(caught.value.oplog_id)
        assert str(unknown.value) == f"no oplog {caught.value.oplog_id}"
        assert journal.list_open() == []
        assert isinstance(draw(), float)   # safe to call again: one oplog, done
        assert [info.state for info in journal.list()] == ["done"]
    finally:
        journal.close()
        if not cluster.running:
            cluster.start()
