"""Crash safety (docs/protocol.rst §2, "the process dies mid-request"): SIGKILL, then retry.

A real ``chttp-server serve`` process runs a handler that has written the first half of
its effect inside the shared transaction and is stopped before the second half. The
test kills the process with SIGKILL (no cleanup of any kind), starts a fresh server
process on the same database and retries with the same id: the handler's effect must
be committed exactly once in total, both halves, and the message stored once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from chttp_core.db import make_engine
from chttp_core.migrate import upgrade
from chttp_core.schema import messages

from .apps import count_writes, host_metadata
from .live import ServerProcess, wait_for

pytestmark = pytest.mark.slow

APP = "tests.server.crash_app:app"


def send(url: str) -> httpx.Response:
    return httpx.post(f"{url}/", content=b"pay 10", headers={"X-Message-ID": "crash-1"},
                      timeout=60)


def stored(engine) -> list:
    with engine.connect() as connection:
        return list(connection.execute(select(messages.c.message_id, messages.c.status)))


def test_sigkill_mid_transaction_then_retry_commits_once(db_url, tmp_path):
    engine = make_engine(db_url)
    host_metadata.create_all(engine)
    upgrade(engine)
    hold = tmp_path / "hold"
    reached = tmp_path / "reached"
    hold.touch()
    env = {"CHTTP_TEST_HOLD_DIR": str(tmp_path)}
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            with ServerProcess(APP, db_url, env=env) as doomed:
                lost = pool.submit(send, doomed.url)
                wait_for(reached.exists, what="the handler to stop mid-transaction")
                assert int(reached.read_text()) == doomed.process.pid
                doomed.kill()
                assert doomed.process.returncode == -9
            with pytest.raises(httpx.TransportError):
                lost.result()  # the sender got no answer: it must retry

        # Nothing of the killed run is visible: neither half, nor the message.
        assert count_writes(engine, "first-half") == 0
        assert count_writes(engine, "second-half") == 0
        assert stored(engine) == []

        hold.unlink()
        with ServerProcess(APP, db_url, env=env) as fresh:
            retry = send(fresh.url)
            again = send(fresh.url)
            fresh_pid = fresh.process.pid
    finally:
        engine.dispose()

    assert retry.status_code == 200
    assert "Idempotent-Replayed" not in retry.headers
    assert retry.json() == {"message_id": "crash-1", "pid": fresh_pid, "body": "pay 10"}
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == retry.content
    engine = make_engine(db_url)
    try:
        assert count_writes(engine, "first-half") == 1
        assert count_writes(engine, "second-half") == 1
        assert stored(engine) == [("crash-1", 200)]
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", [pytest.param("sqlite", id="sqlite")], indirect=True)
def test_serve_refuses_a_schema_behind_the_code(db_url):
    """The real command line fails fast (exit 2) and names the fix; nothing is served."""
    with pytest.raises(AssertionError, match="chttp-server db upgrade"):
        ServerProcess(APP, db_url)


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", id="postgresql")], indirect=True)
def test_serve_with_upgrade_creates_the_schema_and_stops_on_sigterm(db_url):
    engine = make_engine(db_url)
    try:
        host_metadata.create_all(engine)
        with ServerProcess(APP, db_url, extra_args=("--upgrade",)) as server:
            response = httpx.post(f"{server.url}/", content=b"x",
                                  headers={"Idempotency-Key": '"k1"'}, timeout=30)
            assert response.status_code == 200
            assert server.stop() == 0
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(messages)).scalar_one() == 1
    finally:
        engine.dispose()
