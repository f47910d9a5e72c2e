"""A process running an ``async def`` resumable function is SIGKILLed mid-send and resumed.

The sender is a child process (``tests.client.async_sender_app``) that kills itself with
a real SIGKILL at the named point of its certified send; the receiver is a real waitress
server on 127.0.0.1. The oplog is then resumed in each of the three ways an async oplog
can be: the synchronous ``journal.resume_all()``, the ``chttp-client resume`` command and
``await journal.resume_all_async()`` from a running loop (another process). Each time the
resumed send carries the recorded id and body, and the receiver's handler ran once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from chttp_client import Journal, codec
from tests.client.async_sender_app import NAME, install
from tests.client.receiver import count_runs, make_receiver, runs
from tests.server.live import REPO_ROOT, serve_in_thread

pytestmark = pytest.mark.slow


@pytest.fixture
def live_receiver(tmp_path):
    front = make_receiver(f"sqlite:///{tmp_path / 'receiver.db'}")
    with serve_in_thread(front) as base:
        yield front, base
    front.engine.dispose()


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


def resume_all(db_url: str) -> None:
    with Journal(db_url) as journal:
        install(journal)
        [outcome] = journal.resume_all()
        assert outcome.status == "done", outcome


def resume_by_command(db_url: str) -> None:
    resumed = python("-m", "chttp_client.cli", "resume", "--db", db_url,
                     "--import", "tests.client.async_sender_app")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{NAME} v1  done" in resumed.stdout


def resume_all_async(db_url: str) -> None:
    resumed = python("-m", "tests.client.async_sender_app", "resume-async", db_url)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.split()[1] == "done", resumed.stdout


@pytest.mark.parametrize("resume", [
    pytest.param(resume_all, id="journal.resume_all"),
    pytest.param(resume_by_command, id="chttp-client-resume"),
    pytest.param(resume_all_async, id="await-journal.resume_all_async"),
])
@pytest.mark.parametrize(("point", "runs_before_resume"), [
    pytest.param("send-recorded", 0, id="killed-between-recorded-and-sent"),
    pytest.param("send-answered", 1, id="killed-between-answered-and-recorded"),
])
def test_a_sigkilled_async_sender_resumes_with_the_same_id_and_body(
        db_url, live_receiver, point, runs_before_resume, resume):
    front, base = live_receiver
    killed = python("-m", "tests.client.async_sender_app", db_url, f"{base}/escrow", point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    with Journal(db_url) as journal:
        [oplog] = journal.list_open()
        [persisted, send] = journal.get(oplog.id).steps
    assert (persisted.kind, send.kind, send.state) == ("persist", "send", "recorded")
    local = persisted.outcome["value"]
    assert count_runs(front.engine) == runs_before_resume

    resume(db_url)

    with Journal(db_url) as journal:
        info = journal.get(oplog.id)
    [_persisted, resent] = info.steps
    assert info.state == "done" and resent.state == "done"
    assert resent.message_id == send.message_id and resent.request == send.request
    # one run at the receiver, for the recorded id, with the recorded body
    [(message_id, path, body)] = runs(front.engine)
    assert (message_id, path) == (send.message_id, "/escrow")
    assert json.loads(body) == {"amount": 5, "local": local}
    answer = json.loads(codec.decode(resent.response["body"]))
    assert answer["message_id"] == send.message_id
    assert info.result["value"] == local + answer["random number"]
