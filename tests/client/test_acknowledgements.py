"""One acknowledgement per message, even with several processes resuming at once (issue 15).

The answer's commit claims its acknowledgement for the process that made it durable, and
``resume_all()`` DELETEs only what it claimed (chttp_client.acknowledger). The receiver
is a real waitress server on loopback that counts every DELETE it gets.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest

from chttp_client import Journal
from chttp_client.testing import set_fault_hook
from chttp_core.schema import KIND_SEND
from tests.client.conftest import Crash, crash_at
from tests.client.receiver import make_receiver
from tests.client.sender_app import install
from tests.server.live import REPO_ROOT, serve_in_thread

pytestmark = pytest.mark.slow


@pytest.fixture
def live_receiver(tmp_path):
    front = make_receiver(f"sqlite:///{tmp_path / 'receiver.db'}")
    with serve_in_thread(front) as base:
        yield front, base
    front.engine.dispose()


def message_urls(db_url: str) -> dict[str, bool]:
    """Every answered send's message URL path -> acknowledged?"""
    with Journal(db_url) as journal:
        steps = [step for info in journal.list() for step in journal.get(info.id).steps
                 if step.kind == KIND_SEND and step.message_url is not None]
    return {step.message_url.split("://", 1)[1].split("/", 1)[1]: step.acknowledged_at is not None
            for step in steps}


def test_concurrent_resumers_acknowledge_each_message_once(db_url, live_receiver):
    front, base = live_receiver
    escrow = f"{base}/escrow"
    # Finished oplogs whose answers nobody acknowledged yet …
    with Journal(db_url, acknowledge=False) as journal:
        transfer = install(journal)
        for amount in range(8):
            transfer(escrow, amount)
    # … and open ones cut off between "recorded" and "sent", their leases lapsed.
    with Journal(db_url, lease=timedelta(0)) as journal:
        transfer = install(journal)
        set_fault_hook(journal, crash_at("send-recorded", 2))
        for amount in range(4):
            with pytest.raises(Crash):
                transfer(escrow, amount)
    assert front.deletes == {}

    command = [sys.executable, "-m", "tests.client.resumer_app", db_url, "3"]
    processes = [subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for process in processes:
            _out, err = process.communicate(timeout=180)
            assert process.returncode == 0, err
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    acknowledged = message_urls(db_url)
    assert len(acknowledged) == 12 and all(acknowledged.values())
    # Every message was DELETEd, and exactly once.
    assert {f"/{path}": 1 for path in acknowledged} == front.deletes
