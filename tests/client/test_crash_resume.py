"""Real sender processes killed with SIGKILL mid-send, resumed; the receiver runs once.

The receiver is a real waitress server on 127.0.0.1 (tests.server.live); the sender is a
child process that kills itself at the named point (a real SIGKILL, not an exception).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from chttp_client import Journal
from chttp_client.testing import expire_leases, set_fault_hook
from tests.client.receiver import count_runs, make_receiver, runs
from tests.client.sender_app import NAME, install
from tests.server.live import REPO_ROOT, serve_in_thread

pytestmark = pytest.mark.slow


@pytest.fixture
def live_receiver(tmp_path):
    front = make_receiver(f"sqlite:///{tmp_path / 'receiver.db'}")
    with serve_in_thread(front) as base:
        yield front, base
    front.engine.dispose()


def run_child(db_url: str, escrow_url: str, point: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.client.sender_app", db_url, escrow_url, point],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(("point", "runs_before_resume"), [
    pytest.param("send-recorded", 0, id="killed-between-recorded-and-sent"),
    pytest.param("send-answered", 1, id="killed-between-answered-and-recorded"),
])
def test_sigkilled_sender_resumes_and_the_receiver_runs_once(db_url, live_receiver, point,
                                                              runs_before_resume):
    front, base = live_receiver
    child = run_child(db_url, f"{base}/escrow", point)
    assert child.returncode == -signal.SIGKILL, child.stderr

    with Journal(db_url) as journal:
        install(journal)
        [oplog] = journal.list_open()
        recorded = journal.get(oplog.id).steps
        assert [(s.kind, s.state) for s in recorded] == [("persist", "done"), ("send", "recorded")]
        assert count_runs(front.engine) == runs_before_resume

        [outcome] = journal.resume_all()
        assert outcome.status == "done"
        journal.wait_for_acknowledgements()
        steps = journal.get(oplog.id).steps
        local = steps[0].outcome["value"]
    [(message_id, path, body)] = runs(front.engine)
    assert message_id == recorded[1].message_id and path == "/escrow"
    assert json.loads(body) == {"amount": 5}
    assert outcome.value >= local


def open_oplogs_with_free_leases(db_url: str, escrow_url: str, count: int) -> None:
    """``count`` oplogs cut off between "recorded" and "sent", their leases already lapsed.

    Made in this process (a simulated crash) to keep the test fast; the SIGKILL tests
    above cover the real kill.
    """
    from tests.client.conftest import Crash, crash_at

    with Journal(db_url, lease=timedelta(0)) as journal:
        transfer = install(journal)
        set_fault_hook(journal, crash_at("send-recorded", 2))
        for _ in range(count):
            with pytest.raises(Crash):
                transfer(escrow_url, 5)


def test_cli_list_show_and_resume(db_url, live_receiver, capsys):
    from chttp_client.cli import main

    front, base = live_receiver
    open_oplogs_with_free_leases(db_url, f"{base}/escrow", 1)
    assert main(["list", "--db", db_url]) == 0
    listed = capsys.readouterr().out
    assert NAME in listed and " open " in listed
    oplog_id = listed.split()[0]
    assert main(["show", "--db", db_url, oplog_id]) == 0
    shown = capsys.readouterr().out
    assert "send" in shown and "recorded" in shown and "/escrow" in shown

    resumed = subprocess.run(
        [sys.executable, "-m", "chttp_client.cli", "resume", "--db", db_url,
         "--import", "tests.client.sender_app"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{oplog_id}  {NAME} v1  done" in resumed.stdout
    assert main(["list", "--db", db_url]) == 0
    assert capsys.readouterr().out.strip() == ""
    assert main(["list", "--all", "--db", db_url]) == 0
    assert " done " in capsys.readouterr().out
    assert count_runs(front.engine) == 1


def test_two_processes_resuming_at_once_never_run_one_oplog_twice(db_url, live_receiver):
    front, base = live_receiver
    oplogs = 6
    open_oplogs_with_free_leases(db_url, f"{base}/escrow", oplogs)

    command = [sys.executable, "-m", "chttp_client.cli", "resume", "--db", db_url,
               "--import", "tests.client.sender_app"]
    processes = [subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr
            outputs.append(stdout)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    done = [line.split()[0] for out in outputs for line in out.splitlines() if "  done  " in line]
    assert len(done) == oplogs and len(set(done)) == oplogs
    assert count_runs(front.engine) == oplogs
    with Journal(db_url) as journal:
        assert journal.list_open() == []


def test_an_expired_lease_of_a_live_owner_can_be_taken(db_url, live_receiver):
    from chttp_client import OplogBusyError
    from tests.client.conftest import Crash, crash_at

    front, base = live_receiver
    with Journal(db_url, lease=timedelta(hours=1)) as holder:
        transfer = install(holder)
        set_fault_hook(holder, crash_at("send-recorded", 2))
        with pytest.raises(Crash):
            transfer(f"{base}/escrow", 1)
        [oplog] = holder.list_open()
        with pytest.raises(OplogBusyError):  # this live process still holds it
            holder.resume(oplog.id)
        [outcome] = holder.resume_all()
        assert outcome.status == "busy"
    with Journal(db_url, lease=timedelta(hours=1),
                 clock=lambda: datetime.now(timezone.utc) + timedelta(hours=2)) as later:
        # A clock two hours ahead does not end the lease: the database's clock does.
        [outcome] = later.resume_all()
        assert outcome.status == "busy" and outcome.error.owner == oplog.lease_owner
        assert expire_leases(later, oplog.id) == 1  # the hour has passed, by the database
        [outcome] = later.resume_all()
        assert outcome.status == "done"
    assert count_runs(front.engine) == 1


#: Run a module as __main__ in an interpreter where WebOb and chttp_server cannot be
#: imported (issue 8: a sender-only service leaves WebOb out).
_WITHOUT_WEBOB = """
import importlib.abc, runpy, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('webob', 'chttp_server'):
            raise ImportError(f'{name} is blocked in this process')
        return None

sys.meta_path.insert(0, Blocker())
for blocked in ('webob', 'chttp_server'):
    try:
        __import__(blocked)
    except ImportError:
        pass
    else:
        raise SystemExit(f'{blocked} could be imported')
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


def test_a_sender_without_webob_sends_is_killed_and_resumes(db_url, live_receiver):
    front, base = live_receiver

    def without_webob(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _WITHOUT_WEBOB, *args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)

    killed = without_webob("tests.client.sender_app", db_url, f"{base}/escrow", "send-answered")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert count_runs(front.engine) == 1  # the send really happened before the kill

    resumed = without_webob("chttp_client.cli", "resume", "--db", db_url,
                            "--import", "tests.client.sender_app")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{NAME} v1  done" in resumed.stdout
    with Journal(db_url) as journal:
        [oplog] = journal.list()
        assert oplog.state == "done"
        [_persist, send] = journal.get(oplog.id).steps
    assert send.state == "done" and send.response["status"] == 201
    # the resume resent the same id and the receiver replayed it: its handler ran once
    assert [message_id for message_id, _path, _body in runs(front.engine)] == [send.message_id]
