"""Nothing left unacknowledged by a normal exit (issue 25, deliverable 3).

* A script that ends without ``close()`` still DELETEs its answers: each journal's
  ``atexit`` hook waits (at most ~2 s) for the queue and records the marks.
* ``journal.close()`` does the same, bounded.
* ``chttp-client purge`` says how many finished oplogs it kept and why; ``list`` marks
  them ``unacked``.

A real receiver served by waitress on loopback; a real subprocess for the exit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from chttp_client import Journal, resumable
from chttp_client.cli import main as chttp_client
from chttp_core.schema import KIND_SEND
from tests.client.receiver import make_receiver
from tests.server.live import REPO_ROOT, serve_in_thread


@pytest.fixture
def live_receiver(tmp_path):
    front = make_receiver(f"sqlite:///{tmp_path / 'receiver.db'}")
    with serve_in_thread(front) as base:
        yield front, base
    front.engine.dispose()


def sends(db_url: str) -> list[tuple[str, bool]]:
    with Journal(db_url) as journal:
        return [(step.message_id, step.acknowledged_at is not None)
                for info in journal.list() for step in journal.get(info.id).steps
                if step.kind == KIND_SEND]


def test_a_script_that_exits_normally_leaves_no_unacknowledged_send(live_receiver, tmp_path):
    front, base = live_receiver
    db_url = f"sqlite:///{tmp_path / 'sender.db'}"
    script = tmp_path / "sender.py"
    script.write_text(textwrap.dedent(f"""
        from chttp_client import Journal, resumable

        journal = Journal({db_url!r})

        @resumable(journal, name="sender.transfer")
        def transfer(amount, *, chttp_context):
            return chttp_context.post({base + '/escrow'!r}, json={{"amount": amount}}).status_code

        print(transfer(5), transfer(7))
        # no close(), no wait: the interpreter's exit flushes the acknowledgements
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    recorded = sends(db_url)
    assert len(recorded) == 2 and all(acked for _id, acked in recorded)
    assert sum(front.deletes.values()) == 2


def test_close_flushes_the_acknowledgements(live_receiver, tmp_path):
    front, base = live_receiver
    db_url = f"sqlite:///{tmp_path / 'sender.db'}"
    journal = Journal(db_url)

    @resumable(journal, name="tests.acks_at_exit.close")
    def transfer(*, chttp_context):
        return chttp_context.post(f"{base}/escrow", json={"amount": 1}).status_code

    transfer()
    journal.close()
    [(_id, acked)] = sends(db_url)
    assert acked and sum(front.deletes.values()) == 1


def test_purge_says_what_it_kept_and_list_marks_it(live_receiver, tmp_path, capsys):
    _front, base = live_receiver
    db_url = f"sqlite:///{tmp_path / 'sender.db'}"
    journal = Journal(db_url, acknowledge=False)   # answers stay unacknowledged

    @resumable(journal, name="tests.acks_at_exit.unacked")
    def transfer(*, chttp_context):
        return chttp_context.post(f"{base}/escrow", json={"amount": 1}).status_code

    @resumable(journal, name="tests.acks_at_exit.nothing")
    def nothing(*, chttp_context):
        return chttp_context.persist(1)

    transfer(), transfer(), nothing()
    journal.close()
    capsys.readouterr()

    assert chttp_client(["list", "--db", db_url, "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.endswith("  unacked") for line in lines) == [False, True, True]

    assert chttp_client(["purge", "--db", db_url, "--older-than-days", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 oplog(s) purged\n2 finished oplog(s) kept: an answer not acknowledged yet")
    assert "--horizon-days 15" in out
