"""Exactly-once under concurrency: 32 callers, one message id, real threads and connections.

A real waitress server (in a thread of this process) serves the middleware; 32 httpx
clients in 32 threads send the same certified request, each over its own TCP connection,
each request running on its own pooled database connection. The first claimer is held
at a gate inside its transaction until every duplicate is provably waiting for it
(PostgreSQL: ``pg_stat_activity`` shows them blocked on its row lock), so the test really
exercises docs/protocol.rst §2 step 1's "wait for the concurrent claimer", not a lucky order.

"Exactly once" is counted in the host's own table, written through the shared
transaction: committed rows, not handler calls.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import webob
from sqlalchemy import func, select, text

from chttp_core.db import make_engine
from chttp_server import CertifiedMiddleware, Resource
from chttp_core.migrate import upgrade
from chttp_core.schema import messages

from .apps import count_writes, host_metadata, record
from .live import serve_in_thread, wait_for

pytestmark = pytest.mark.slow

CALLERS = 32


class Gated(Resource):
    """The first run holds its transaction open at a gate; later runs go straight through."""

    def __init__(self, *, first_fails: bool = False) -> None:
        self.first_fails = first_fails
        self.entered = threading.Event()
        self.release = threading.Event()
        self.runs = 0
        self._lock = threading.Lock()

    def handle_post(self, req):
        with self._lock:
            self.runs += 1
            run = self.runs
        record(req, "gated")
        if run == 1:
            self.entered.set()
            assert self.release.wait(60), "the test never opened the gate"
            if self.first_fails:
                # 5xx: the claim and the write roll back; a waiter must take over.
                return webob.Response(status=500, body=b"first claimer failed")
        return {"message_id": req.chttp.message_id, "body": req.text, "run": run}


@pytest.fixture
def pool_engine(db_url):
    """An engine with a connection per caller, so no request waits for the pool."""
    engine = make_engine(db_url, pool_size=CALLERS + 8, max_overflow=0)
    host_metadata.create_all(engine)
    upgrade(engine)
    yield engine
    engine.dispose()


def send(base_url: str, message_id: str = "concurrent-1") -> httpx.Response:
    # A client per call: its own TCP connection, as separate senders would have.
    with httpx.Client(timeout=60) as client:
        return client.post(f"{base_url}/", content=b"same body",
                           headers={"X-Message-ID": message_id})


def lock_waiters(engine) -> int:
    """Backends of this database blocked on a lock (the duplicates' claims)."""
    with engine.connect() as connection:
        return int(connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )).scalar_one())


def stored_rows(engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(messages)).scalar_one())


def run_callers(base_url: str, resource: Gated, *, before_release) -> tuple[httpx.Response, list[httpx.Response]]:
    """Send the first request, hold it at the gate, send the duplicates, then release."""
    with ThreadPoolExecutor(max_workers=CALLERS) as pool:
        first = pool.submit(send, base_url)
        wait_for(resource.entered.is_set, what="the first claimer to reach its handler")
        duplicates = [pool.submit(send, base_url) for _ in range(CALLERS - 1)]
        try:
            before_release(duplicates)
        finally:
            resource.release.set()
        return first.result(), [future.result() for future in duplicates]


def run_while_duplicates_wait(pool_engine, resource):
    """Run the callers; release the first claimer once every duplicate waits on its claim."""
    app = CertifiedMiddleware(resource, engine=pool_engine, claim_timeout=60)
    with serve_in_thread(app, threads=CALLERS + 4) as base_url:
        def all_duplicates_blocked(_duplicates):
            wait_for(lambda: lock_waiters(pool_engine) == CALLERS - 1,
                     what=f"{CALLERS - 1} duplicates blocked on the claim")

        return run_callers(base_url, resource, before_release=all_duplicates_blocked)


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", id="postgresql")], indirect=True)
def test_duplicates_wait_for_the_claimer_and_replay_its_response(pool_engine):
    resource = Gated()
    first, duplicates = run_while_duplicates_wait(pool_engine, resource)

    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    for response in duplicates:
        assert response.status_code == 200
        assert response.content == first.content
        assert response.headers["Idempotent-Replayed"] == "true"
        assert response.headers["X-Message-URL"] == first.headers["X-Message-URL"]
    assert first.json()["run"] == 1
    assert resource.runs == 1
    assert count_writes(pool_engine, "gated") == 1
    assert stored_rows(pool_engine) == 1


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", id="postgresql")], indirect=True)
def test_duplicates_get_409_with_retry_after_only_after_the_bounded_wait(pool_engine):
    resource = Gated()
    app = CertifiedMiddleware(resource, engine=pool_engine, claim_timeout=1)
    seen_waiting = []
    with serve_in_thread(app, threads=CALLERS + 4) as base_url:
        def all_duplicates_answered(duplicates):
            # The claimer is still inside its transaction: every duplicate must first
            # have waited on it (seen in pg_stat_activity), then given up with 409.
            def done():
                seen_waiting.append(lock_waiters(pool_engine))
                return all(future.done() for future in duplicates)

            wait_for(done, what="every duplicate to give up waiting")
            assert count_writes(pool_engine, "gated") == 0  # nothing committed yet

        first, duplicates = run_callers(base_url, resource, before_release=all_duplicates_answered)
        retry = send(base_url)

    assert max(seen_waiting) >= 1
    for response in duplicates:
        assert response.status_code == 409
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.json()["type"] == "message-in-progress"
        assert int(response.headers["Retry-After"]) >= 1
    assert first.status_code == 200
    assert retry.status_code == 200
    assert retry.content == first.content
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert resource.runs == 1
    assert count_writes(pool_engine, "gated") == 1


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", id="postgresql")], indirect=True)
def test_a_waiter_takes_over_when_the_claimer_rolls_back(pool_engine):
    resource = Gated(first_fails=True)
    first, duplicates = run_while_duplicates_wait(pool_engine, resource)

    assert first.status_code == 500
    assert first.content == b"first claimer failed"
    assert "X-Message-URL" not in first.headers
    assert {response.status_code for response in duplicates} == {200}
    fresh = [r for r in duplicates if "Idempotent-Replayed" not in r.headers]
    assert len(fresh) == 1, "exactly one waiter takes over the claim"
    assert all(r.content == fresh[0].content for r in duplicates)
    assert fresh[0].json()["run"] == 2
    assert resource.runs == 2
    # The failed first run's write rolled back with its claim; the waiter's committed.
    assert count_writes(pool_engine, "gated") == 1
    assert stored_rows(pool_engine) == 1


@pytest.mark.parametrize("db_url", [pytest.param("sqlite", id="sqlite")], indirect=True)
def test_sqlite_duplicates_serialise_and_replay(pool_engine):
    resource = Gated()
    app = CertifiedMiddleware(resource, engine=pool_engine, claim_timeout=60)
    with serve_in_thread(app, threads=CALLERS + 4) as base_url:
        def pile_up(duplicates):
            # SQLite shows no lock waiters; give the duplicates a moment to queue on the
            # database lock. Exactly-once does not depend on them having arrived.
            threading.Event().wait(0.3)

        first, duplicates = run_callers(base_url, resource, before_release=pile_up)

    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    for response in duplicates:
        assert response.status_code == 200
        assert response.content == first.content
        assert response.headers["Idempotent-Replayed"] == "true"
    assert resource.runs == 1
    assert count_writes(pool_engine, "gated") == 1
    assert stored_rows(pool_engine) == 1


@pytest.mark.parametrize("db_url", [pytest.param("sqlite", id="sqlite")], indirect=True)
def test_sqlite_waiter_past_claim_timeout_gets_503_and_the_app_is_not_run(pool_engine):
    """SQLite locks the whole database, not the key: a writer that cannot get the lock
    within ``claim_timeout`` cannot know whether the holder has *its* id, so the answer
    is 503 ``store-unavailable`` (retryable, with Retry-After), never a run."""
    resource = Gated()
    app = CertifiedMiddleware(resource, engine=pool_engine, claim_timeout=0.2, retry_after=2)
    with serve_in_thread(app, threads=CALLERS + 4) as base_url:
        def all_duplicates_answered(duplicates):
            wait_for(lambda: all(future.done() for future in duplicates),
                     what="every duplicate to give up on the database lock")

        first, duplicates = run_callers(base_url, resource, before_release=all_duplicates_answered)
        retry = send(base_url)

    for response in duplicates:
        assert response.status_code == 503
        assert response.json()["type"] == "store-unavailable"
        assert response.headers["Retry-After"] == "2"
    assert first.status_code == 200
    assert retry.content == first.content
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert resource.runs == 1
    assert count_writes(pool_engine, "gated") == 1
