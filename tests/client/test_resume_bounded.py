"""One stuck oplog never holds a start (issue 25, deliverable 2).

``resume_all()`` returns within its ``timeout``: an oplog whose send still retries is
reported ``pending`` and goes on in the background, which stops cleanly at ``close()``
and at interpreter exit (its lease given up, so the next start resumes it at once);
``timeout=None`` waits for every oplog; the outcome is logged at INFO. Sync and async
alike. Real SQLite journals, a closed loopback port, a real receiver.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from chttp_client import Journal, RetryPolicy, resumable
from chttp_client.testing import expire_leases
from tests.client.conftest import Crash

#: Short real waits (the background thread sleeps for real), a long deadline.
POLICY = RetryPolicy(jitter=False, initial_backoff=0.02, max_backoff=0.05, deadline=timedelta(hours=1))
NAME = "tests.resume_bounded.ship"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ship(url: str, *, chttp_context):
    return chttp_context.post(url, json={"item": "book"}).status_code


def crash_on_first_wait(_seconds: float) -> None:
    raise Crash("killed while waiting to retry")


@pytest.fixture
def stuck(tmp_path: Path) -> str:
    """A journal file holding one open oplog whose send goes to a closed port."""
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    first = Journal(url, retry=POLICY, sleep=crash_on_first_wait)
    with pytest.raises(Crash):
        resumable(first, name=NAME)(ship)(f"http://127.0.0.1:{closed_port()}/flaky")
    expire_leases(first)
    first.close()
    return url


def test_a_stuck_oplog_is_pending_and_the_call_returns(stuck, receiver, caplog):
    caplog.set_level(logging.INFO, logger="chttp_client")
    journal = Journal(stuck, retry=POLICY)
    [outcome] = journal.resume_all(timeout=0.3)
    assert outcome.status == "pending" and outcome.function == NAME
    assert "resume_all: 1 open oplog(s): 1 pending (pending ones go on in the background)" in caplog.text
    assert "attempt" in caplog.text and "failed: ConnectError" in caplog.text   # still retrying
    journal.close()                                   # stops the background run cleanly
    assert "background resume stopped" in caplog.text

    # Its lease was given up: the next start resumes it at once (same id, now answered).
    again = Journal(stuck, retry=POLICY, transport=httpx.WSGITransport(app=receiver))
    [[done]] = [again.resume_all(timeout=None)]
    assert done.status == "done" and done.oplog_id == outcome.oplog_id
    again.close()


def test_timeout_none_waits_for_every_oplog(stuck, receiver):
    journal = Journal(stuck, retry=POLICY, transport=httpx.WSGITransport(app=receiver))
    [outcome] = journal.resume_all(timeout=None)
    assert outcome.status == "done" and journal.list_open() == []
    journal.close()


def test_an_oplog_that_ends_in_time_is_reported_as_before(stuck, receiver, caplog):
    caplog.set_level(logging.INFO, logger="chttp_client")
    journal = Journal(stuck, retry=POLICY, transport=httpx.WSGITransport(app=receiver))
    [outcome] = journal.resume_all()
    assert outcome.status == "done" and outcome.value == 201
    assert "resume_all: 1 open oplog(s): 1 done" in caplog.text and "background" not in caplog.text
    journal.close()


def test_async_resume_all_is_bounded_alike(stuck, receiver, caplog):
    caplog.set_level(logging.INFO, logger="chttp_client")

    async def main() -> str:
        async with Journal(stuck, retry=POLICY) as journal:
            [outcome] = await journal.resume_all_async(timeout=0.3)
            return outcome.status

    assert asyncio.run(main()) == "pending"
    assert "1 pending (pending ones go on in the background)" in caplog.text
    again = Journal(stuck, retry=POLICY, transport=httpx.WSGITransport(app=receiver))
    [done] = again.resume_all(timeout=None)
    assert done.status == "done"
    again.close()


def test_a_script_that_exits_stops_its_background_resume_cleanly(stuck, receiver, tmp_path):
    script = tmp_path / "start.py"
    script.write_text(textwrap.dedent(f"""
        import logging
        from datetime import timedelta
        from chttp_client import Journal, RetryPolicy, resumable

        logging.basicConfig(level=logging.INFO)
        journal = Journal({stuck!r}, retry=RetryPolicy(
            jitter=False, initial_backoff=0.02, max_backoff=0.05, deadline=timedelta(hours=1)))

        @resumable(journal, name={NAME!r})
        def ship(url, *, chttp_context):
            return chttp_context.post(url, json={{"item": "book"}}).status_code

        print([o.status for o in journal.resume_all(timeout=0.3)])
        # no close(): the interpreter's exit stops the background resume
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['pending']" and "background resume stopped" in done.stderr
    # Not busy afterwards: the run gave its lease up before the process ended.
    again = Journal(stuck, retry=POLICY, transport=httpx.WSGITransport(app=receiver))
    [outcome] = again.resume_all(timeout=None)
    assert outcome.status == "done"
    again.close()


def test_a_loop_that_ends_without_closing_the_journal_stops_its_background_resume(
        stuck, receiver, tmp_path):
    """asyncio.run cancels the pending task at shutdown: the ``def`` run in its worker
    thread stops at its next wait instead of retrying up to the deadline."""
    script = tmp_path / "start_async.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio
        from datetime import timedelta
        from chttp_client import Journal, RetryPolicy, resumable

        journal = Journal({stuck!r}, retry=RetryPolicy(
            jitter=False, initial_backoff=0.02, max_backoff=0.05, deadline=timedelta(hours=1)))

        @resumable(journal, name={NAME!r})
        def ship(url, *, chttp_context):
            return chttp_context.post(url, json={{"item": "book"}}).status_code

        async def main():
            print([o.status for o in await journal.resume_all_async(timeout=0.3)])

        asyncio.run(main())   # no aclose()
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['pending']"
    again = Journal(stuck, retry=POLICY, transport=httpx.WSGITransport(app=receiver))
    [outcome] = again.resume_all(timeout=None)
    assert outcome.status == "done"
    again.close()


def test_chttp_client_resume_with_a_timeout_reports_pending(stuck, capsys):
    from chttp_client.cli import main as chttp_client

    assert chttp_client(["resume", "--db", stuck, "--timeout", "0.3"]) == 1
    captured = capsys.readouterr()
    assert "pending  still retrying: stopped, left open for the next resume" in captured.out
    assert captured.out.strip().endswith("1 open oplog(s): 1 pending")
    assert "1 still pending after --timeout 0.3 s" in captured.err


# -- a closed HTTP client is a stop, never the function's failure --------------------------
# CI found it (1 run in ~20 under load): ``close()`` closed the client while a background
# ``def`` run, in a task's worker thread, was about to send; httpx's "the client has been
# closed" RuntimeError was recorded as the function's error — a failed oplog whose message
# may well have been delivered. Here the client is closed at the first wait, every time.

def test_a_send_whose_client_was_closed_leaves_the_oplog_open(tmp_path, receiver):
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    journal = Journal(url, retry=POLICY)
    journal.sleep = lambda _seconds: journal.http_client.close()   # closed between two attempts
    with pytest.raises(asyncio.CancelledError, match="client was closed"):
        resumable(journal, name=NAME)(ship)(f"http://127.0.0.1:{closed_port()}/flaky")
    [stopped] = journal.list()
    assert stopped.state == "open" and stopped.lease_owner is None   # nothing failed, lease given up
    [journaled] = journal.get(stopped.id).steps
    journal.close()

    again = Journal(url, retry=POLICY, transport=httpx.WSGITransport(app=receiver))
    [outcome] = again.resume_all(timeout=None)
    assert outcome.status == "done" and outcome.value == 201
    [sent] = again.get(stopped.id).steps
    assert sent.message_id == journaled.message_id and sent.response is not None   # same id
    again.close()


def test_an_async_send_whose_client_was_closed_leaves_the_oplog_open(tmp_path, receiver):
    url = f"sqlite:///{tmp_path / 'journal.db'}"

    async def ship_async(target: str, *, chttp_context):
        return (await chttp_context.post(target, json={"item": "book"})).status_code

    async def main() -> None:
        client = httpx.AsyncClient()

        async def close_client(_seconds: float) -> None:
            await client.aclose()

        async with Journal(url, retry=POLICY, async_http_client=client,
                           async_sleep=close_client) as journal:
            with pytest.raises(asyncio.CancelledError, match="client was closed"):
                await resumable(journal, name=NAME + ".async")(ship_async)(
                    f"http://127.0.0.1:{closed_port()}/flaky")
            [stopped] = journal.list()
            assert stopped.state == "open" and stopped.lease_owner is None

    asyncio.run(main())
