"""The journal's PostgreSQL server killed in the middle of a function (issue 15).

A crash of the journal's database (``pg_ctl stop -m immediate``: no shutdown checkpoint)
between two sends fails the run at its next journal write; once the server is back, the
oplog resumes correctly: the first send is resent under its recorded id (the receiver
replays, its handler ran once) and the function ends with the recorded values.
"""

from __future__ import annotations

import random
from typing import Iterator

import httpx
import pytest
from sqlalchemy.exc import DBAPIError

from chttp_client import Journal, resumable
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

        with pytest.raises(DBAPIError):  # the second send's intent commit: the server is gone
            transfer()
        assert count_runs(receiver.engine) == 1  # only the first send left the process

        cluster.start()
        [oplog] = journal.list_open()
        [recorded] = journal.get(oplog.id).steps  # the first send, its answer never committed
        assert recorded.state == "recorded"
        first, nonce, second = journal.resume(oplog.id, force=True)
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
