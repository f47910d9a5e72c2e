"""``chttp_context.checkpoint()``: buffered records made durable before a side effect."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys

import pytest
from sqlalchemy import select

from chttp_client import Journal, resumable
from chttp_core.schema import messages
from chttp_client.testing import set_fault_hook
from tests.client.checkpoint_app import NAME
from tests.client.conftest import BASE, Crash, crash_at
from tests.client.test_journal import count_commits
from tests.server.live import REPO_ROOT


def token_writer(journal, path, *, checkpoint: bool):
    @resumable(journal)
    def write_token(*, chttp_context):
        token = chttp_context.persist(secrets.token_hex, 16)
        if checkpoint:
            chttp_context.checkpoint()
        with path.open("a") as file:  # a side effect outside the journal
            file.write(token + "\n")
        chttp_context.persist("after the side effect")
        return token

    return write_token


def test_a_checkpointed_persist_survives_a_crash_after_the_side_effect(journal, tmp_path):
    path = tmp_path / "token"
    write_token = token_writer(journal, path, checkpoint=True)
    set_fault_hook(journal, crash_at("before-step", 2))
    with pytest.raises(Crash):
        write_token()
    set_fault_hook(journal, None)
    [written] = path.read_text().split()
    [oplog] = journal.list_open()
    assert journal.get(oplog.id).steps[0].outcome["value"] == written

    assert journal.resume(oplog.id, force=True) == written
    assert path.read_text().split() == [written, written]  # repeated, with the same token


def test_without_a_checkpoint_the_crash_loses_the_token_the_file_holds(journal, tmp_path):
    write_token = token_writer(journal, tmp_path / "token", checkpoint=False)
    set_fault_hook(journal, crash_at("before-step", 2))
    with pytest.raises(Crash):
        write_token()
    assert journal.list() == []  # nothing committed: no resume can know the written token


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "survives"), [
    pytest.param("checkpoint", True, id="checkpoint"),
    pytest.param("no-checkpoint", False, id="no-checkpoint"),
])
def test_sigkilled_after_the_side_effect(db_url, tmp_path, mode, survives):
    path = tmp_path / "token"
    child = subprocess.run(
        [sys.executable, "-m", "tests.client.checkpoint_app", db_url, str(path), mode],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    [written] = path.read_text().split()
    with Journal(db_url) as journal:
        outcomes = journal.resume_all()
        if survives:
            [outcome] = outcomes
            assert (outcome.function, outcome.status, outcome.value) == (NAME, "done", written)
            assert path.read_text().split() == [written, written]
        else:
            assert outcomes == [] and journal.list() == []


def test_checkpoint_commits_only_what_is_buffered(journal):
    @resumable(journal)
    def f(*, chttp_context):
        chttp_context.checkpoint()  # nothing buffered: no commit, no oplog row
        chttp_context.persist(1)
        chttp_context.persist(2)
        chttp_context.checkpoint()  # one commit for both
        chttp_context.checkpoint()  # nothing new
        return "ok"

    journal.ensure_schema()
    commits = count_commits(journal.engine)
    assert f() == "ok"
    assert commits[0] == 2  # the checkpoint and the finish


def test_checkpoint_records_a_buffered_answer_and_lets_it_be_acknowledged(journal, receiver):
    seen = {}

    @resumable(journal)
    def f(*, chttp_context):
        chttp_context.post(f"{BASE}/escrow", json={})
        chttp_context.checkpoint()
        [oplog] = journal.list_open()
        seen["steps"] = journal.get(oplog.id).steps
        journal.wait_for_acknowledgements()
        with receiver.engine.connect() as connection:
            seen["state"] = connection.execute(select(messages.c.state)).scalar_one()
        return "ok"

    assert f() == "ok"
    [send] = seen["steps"]
    assert send.state == "done" and send.response["status"] == 201
    assert seen["state"] == "acknowledged"
