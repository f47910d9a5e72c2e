"""An operator abandons an oplog that a live worker is running (issue 23, item 9).

The worker is told the truth — :class:`OplogAbandonedError` with the operator's reason,
not :class:`OplogTakenOverError` "completed there" — at its next journal write, and
sends nothing more. ``chttp-client abandon`` refuses an oplog under a live lease (naming
the holder and the lease's end) unless ``--force`` is given. Real SQLite and PostgreSQL
journals, a real receiver; the "operator" runs the CLI's ``main`` while the worker is
inside its function.
"""

from __future__ import annotations

import pytest

from chttp_client import OplogAbandonedError, OplogTakenOverError
from chttp_client.cli import main
from tests.client.conftest import BASE
from tests.client.receiver import count_runs


def test_the_worker_gets_the_operators_reason_and_sends_nothing_more(journal, receiver, db_url, capsys):
    said: dict[str, object] = {}

    def operator() -> int:
        [oplog] = journal.list_open()
        said["oplog"] = oplog.id
        # Without --force: refused, naming the live holder and its lease's end.
        said["refused"] = main(["abandon", "--db", db_url, oplog.id, "--reason", "cancelled by ops"])
        said["refusal"] = capsys.readouterr().err
        said["forced"] = main(["abandon", "--db", db_url, oplog.id, "--reason", "cancelled by ops",
                               "--force"])
        return 1

    def transfer(*, chttp_context):
        chttp_context.post(f"{BASE}/escrow", json={"n": 1})
        chttp_context.persist(operator)
        chttp_context.post(f"{BASE}/escrow", json={"n": 2})   # its intent commit fails
        return "finished"

    from chttp_client import resumable

    wrapped = resumable(journal, name="tests.abandon_live.transfer")(transfer)
    with pytest.raises(OplogAbandonedError) as caught:
        wrapped()
    assert not isinstance(caught.value, OplogTakenOverError)
    assert caught.value.reason == "cancelled by ops" and caught.value.oplog_id == said["oplog"]
    assert said["refused"] == 1
    refusal = str(said["refusal"])
    assert "is being run by" in refusal and "lease until" in refusal and "--force" in refusal
    assert said["forced"] == 0
    assert count_runs(receiver.engine) == 1          # the second message never left
    info = journal.get(str(said["oplog"]))
    assert (info.state, info.abandoned_reason) == ("abandoned", "cancelled by ops")
    assert [step.number for step in info.steps] == [1]   # nothing of the run recorded after


def test_abandon_needs_no_force_once_the_worker_is_gone(journal, db_url, capsys):
    """A crashed run's lease (expired, or its process gone) is no reason to ask."""
    from chttp_client import resumable
    from chttp_client.testing import expire_leases

    class Stop(BaseException):
        pass

    @resumable(journal, name="tests.abandon_live.stopped")
    def stopped(*, chttp_context):
        chttp_context.persist(1)
        chttp_context.checkpoint()
        raise Stop()

    with pytest.raises(Stop):
        stopped()
    [oplog] = journal.list_open()
    assert journal.store.live_lease(oplog.id) is not None   # this process still looks alive
    expire_leases(journal)
    assert journal.store.live_lease(oplog.id) is None
    assert main(["abandon", "--db", db_url, oplog.id, "--reason", "gone"]) == 0
    assert f"oplog {oplog.id} abandoned: gone" in capsys.readouterr().out
