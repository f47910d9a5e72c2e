"""One unreadable oplog never stops the others (issue 23, items 7 and 8).

An oplog whose arguments, result or a step cannot be read — not JSON, a tag of a newer
version, or a record of the wrong *shape* such as ``{"valu": 1}`` — is quarantined: left
open and intact, never run, reported as ``unreadable`` by ``resume_all()``, ``list`` and
``resume`` (exit 1), shown raw by ``show``, and ``abandon`` still ends it. Records are
corrupted with SQL in the real journal database (SQLite and PostgreSQL), as a hand edit
or a disk would.
"""

from __future__ import annotations

import logging
import random
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update

from chttp_client import Journal, resumable
from chttp_client.cli import main
from chttp_client.codec import CodecError
from chttp_core.schema import oplog_steps, oplogs
from tests.client.conftest import BASE


class Stop(BaseException):
    """Leaves an oplog open, as a crash would (not an Exception: never recorded)."""


def stopped_oplogs(journal: Journal, count: int) -> tuple[str, list[str]]:
    """``count`` open oplogs of one new function, each stopped after a checkpoint."""
    name = f"tests.quarantine.job_{uuid.uuid4().hex[:8]}"
    stop = [True]

    @resumable(journal, name=name)
    def job(n, *, chttp_context):
        token = chttp_context.persist(random.random)
        chttp_context.checkpoint()
        if stop[0]:
            raise Stop()
        return [n, token]

    for n in range(count):
        with pytest.raises(Stop):
            job(n)
    stop[0] = False
    ids = [info.id for info in journal.list_open() if info.function == name]
    assert len(ids) == count
    return name, ids


def set_column(journal: Journal, table, oplog_id: str, **values) -> None:
    key = table.c.id if table is oplogs else table.c.oplog_id
    with journal.engine.begin() as connection:
        assert connection.execute(update(table).where(key == oplog_id).values(**values)).rowcount >= 1


def test_one_corrupted_oplog_in_a_hundred(db_url, capsys, caplog):
    """99 resume, the one is reported (log, outcome, list, show), the exit status says so,
    and abandon ends it."""
    with Journal(db_url, lease=timedelta(0)) as journal:
        name, ids = stopped_oplogs(journal, 100)
    bad = ids[37]
    # Arguments as a newer version (or a renamed type) would have written them.
    with Journal(db_url, lease=timedelta(0)) as journal:
        set_column(journal, oplogs, bad, arguments='{"args": [37], "kwargs": {"$new-type": "x"}}')

    # list: the one is there, unreadable, with the reason; the others are listed as open.
    assert main(["list", "--db", db_url]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 100
    [line] = [line for line in listed if line.startswith(bad)]
    assert "  unreadable  " in line and f"oplog {bad} arguments: unreadable oplog record" in line
    assert "unknown tag '$new-type'" in line

    with caplog.at_level(logging.WARNING, logger="chttp_client"):
        assert main(["resume", "--db", db_url]) == 1
    out, err = capsys.readouterr()
    assert out.strip().endswith("100 open oplog(s): 99 done, 1 unreadable")
    assert f"{bad}  {name} v1  unreadable  oplog {bad} arguments" in out
    assert f"1 unreadable, quarantined and left open ({bad}:" in err
    assert f"1 unreadable oplog(s) quarantined (left open, not run): {bad};" in caplog.text

    with Journal(db_url) as journal:
        assert {info.id for info in journal.list(state="done")} == set(ids) - {bad}
        [left] = journal.list_open()
        assert (left.id, left.status, left.arguments) == (bad, "unreadable", None)
        # The Python API reports it the same way, again, and runs nothing.
        [outcome] = journal.resume_all()
        assert (outcome.oplog_id, outcome.status) == (bad, "unreadable")
        assert isinstance(outcome.error, CodecError) and outcome.error.where == f"oplog {bad} arguments"

    # show: the raw row and the decode error (it used to say "no oplog").
    assert main(["show", "--db", db_url, bad]) == 1
    out, err = capsys.readouterr()
    assert f"oplog     {bad}" in out and "state     unreadable (stored: open)" in out
    assert "unknown tag '$new-type'" in out and "$new-type" in out.split("raw row", 1)[1]
    assert "raw step 1" in out and "quarantined" in err and "abandon" in err

    # resume --id: exit 1 naming the problem.
    assert main(["resume", "--db", db_url, "--id", bad]) == 1
    out, err = capsys.readouterr()
    assert f"{bad}  {name} v1  unreadable  oplog {bad} arguments: unreadable oplog record" in out
    assert "1 unreadable, quarantined" in err

    # abandon works on it; then it is no longer open, and resume has nothing to do.
    assert main(["abandon", "--db", db_url, bad, "--reason", "arguments from a newer version"]) == 0
    capsys.readouterr()
    assert main(["resume", "--db", db_url]) == 0
    assert "0 open oplog(s): nothing to do" in capsys.readouterr().out
    assert main(["list", "--db", db_url, "--all"]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith(bad)]
    assert "  abandoned  " in line


def test_resume_id_of_a_readable_oplog(db_url, capsys):
    with Journal(db_url, lease=timedelta(0)) as journal:
        name, [oplog_id] = stopped_oplogs(journal, 1)
    assert main(["resume", "--db", db_url, "--id", oplog_id]) == 0
    out = capsys.readouterr().out
    assert f"{oplog_id}  {name} v1  done  [0, " in out and out.strip().endswith("1 oplog(s): 1 done")
    assert main(["resume", "--db", db_url, "--id", "no-such-oplog"]) == 1
    assert "no oplog 'no-such-oplog'" in capsys.readouterr().err


# -- records of the wrong shape (item 8) --------------------------------------------------


WRONG_SHAPES = [
    pytest.param("result", '{"valu": 1}', "result: unreadable oplog record: a recorded outcome of the wrong shape",
                 id="result-valu"),
    pytest.param("result", '{"value": 1, "error": null}', "result: unreadable", id="result-two-keys"),
    pytest.param("result", '{"error": {"typ": "builtins:ValueError"}}', "result: unreadable oplog record: "
                 "a recorded exception of the wrong shape", id="result-error-without-type"),
    pytest.param("arguments", '{"args": 1, "kwargs": {}}', "arguments: unreadable oplog record: arguments of "
                 "the wrong shape", id="arguments-not-a-list"),
    pytest.param("outcome", '{"valu": 1}', "step 1: unreadable oplog record: a recorded outcome of the wrong "
                 "shape", id="persist-valu"),
    pytest.param("outcome", "null", "step 1: unreadable oplog record: a persist step", id="persist-no-outcome"),
    pytest.param("response", '{"status": "201", "headers": [], "body": {"$bytes": ""}}',
                 "step 2: unreadable oplog record: a recorded answer of the wrong shape", id="send-status-text"),
    pytest.param("request", '{"method": "POST", "url": "http://x/", "headers": [], "body": "text"}',
                 "step 2: unreadable oplog record: a send request whose body is not bytes", id="send-body-str"),
]


@pytest.mark.parametrize("column, stored, message", WRONG_SHAPES)
def test_a_record_of_the_wrong_shape_is_refused_naming_oplog_and_step(journal, column, stored, message):
    """Never replayed as None: ``{"valu": 1}`` used to come back as a None value/result."""
    @resumable(journal, name=f"tests.quarantine.shape_{uuid.uuid4().hex[:8]}")
    def job(*, chttp_context):
        token = chttp_context.persist(1)
        answer = chttp_context.post(f"{BASE}/escrow", json={"token": token}).status_code
        return [token, answer]

    assert job() == [1, 201]
    [info] = journal.list(state="done")
    if column in ("result", "arguments"):
        set_column(journal, oplogs, info.id, **{column: stored})
    else:
        number = 1 if column == "outcome" else 2
        with journal.engine.begin() as connection:
            connection.execute(update(oplog_steps).where(
                oplog_steps.c.oplog_id == info.id, oplog_steps.c.number == number).values({column: stored}))
    with pytest.raises(CodecError) as caught:
        journal.resume(info.id)     # a finished oplog returns its recorded result: not this one
    assert str(caught.value).startswith(f"oplog {info.id} ")
    assert message in str(caught.value)
    with pytest.raises(CodecError, match=f"oplog {info.id}"):
        journal.get(info.id)
    [listed] = journal.list(state="done")      # listing never fails for it
    if column in ("result", "arguments"):
        assert listed.status == "unreadable" and listed.unreadable is not None
