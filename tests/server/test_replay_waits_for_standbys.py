"""A replay is answered only once the synchronous standbys hold the row it answers from.

PostgreSQL makes a commit visible on the primary when its wait for the synchronous
standby *ends*, and a terminated backend ends it too ("committed locally, but might not
have been replicated"). A retry that then read the row and answered from it would hand
out an answer that a failover loses (found by tests/multihost/test_patroni.py, reproduced
step by step in tests/multihost/test_replay_before_replication.py). So a replay's — and a
GET of the message URL's — transaction writes one WAL record when synchronous standbys are
required, and its COMMIT waits for them (``MessageStore.hold_until_replicated``).

Here on one real server: ``synchronous_standby_names`` names a standby that never
connects, so every wait for it lasts until the setting is cleared. Run on each front
end that ends the replay differently: the store's own transaction (psycopg2, the
statement fused with the COMMIT; psycopg 3, sent before it) and a joined one (Django's
shape: the front end commits).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Iterator

import pytest
import webtest
from sqlalchemy import Engine

from chttp_core.db import make_engine
from chttp_core.migrate import upgrade
from chttp_server import CertifiedMiddleware
from chttp_server.store import MessageKey, MessageStore
from chttp_server.testing import PostgresCluster
from chttp_server.transaction import MessageTransaction

from .apps import Root, count_writes, host_metadata
from .standbys import cluster, held_until_the_standbys_answer  # noqa: F401 - cluster: a fixture

_numbers = iter(range(1, 1000))


@pytest.fixture(params=["psycopg2", "psycopg"])
def engine(request, cluster: PostgresCluster) -> Iterator[Engine]:
    url = cluster.create_database(f"standbys_{request.param}_{next(_numbers)}")
    engine = make_engine(url.replace("postgresql://", f"postgresql+{request.param}://", 1))
    host_metadata.create_all(engine)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_a_replay_waits_for_the_synchronous_standbys(cluster, engine):
    app = webtest.TestApp(CertifiedMiddleware(Root(), engine=engine))
    headers = {"X-Message-ID": "held-1"}
    first = app.post("/echo", b"x", headers=headers, status=201)
    replay = held_until_the_standbys_answer(
        cluster, lambda: app.post("/echo", b"x", headers=headers, status=201))
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.body == first.body
    assert count_writes(engine, "echo") == 1

    url = first.headers["X-Message-URL"]  # GET of the message URL: the same rule
    fetched = held_until_the_standbys_answer(cluster, lambda: app.get(url, status=201))
    assert fetched.body == first.body


def test_a_joined_replay_runs_the_wait_before_the_front_ends_commit(cluster, engine):
    store = MessageStore(engine, retention=timedelta(days=1), claim_timeout=5.0)
    app = webtest.TestApp(CertifiedMiddleware(Root(), engine=engine))
    app.post("/echo", b"x", headers={"X-Message-ID": "held-2"}, status=201)

    def joined_read() -> Any:
        with engine.connect() as connection:
            connection.begin()
            txn = MessageTransaction(store, MessageKey("", "held-2"), retry_after=1,
                                     connection=connection, commit=connection.commit,
                                     rollback=connection.rollback)
            with txn:
                return txn.fetch()

    row = held_until_the_standbys_answer(cluster, joined_read)
    assert row is not None and row.status == 201
