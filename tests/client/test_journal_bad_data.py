"""The sender's journal under bad data (issue 11, item 9): a corrupted step row, a tag
this version does not know, a malformed tagged value.

The codec turns every such record into :class:`~chttp_client.codec.CodecError` (a
``JournalError``) instead of a bare ``KeyError``/``binascii.Error`` or, worse, a silently
wrong value; ``resume_all()`` goes on with the other oplogs. Rows are corrupted with SQL
in the real journal database (SQLite and PostgreSQL), as a disk or a hand edit would.
"""

from __future__ import annotations

import random
import uuid

import pytest
from sqlalchemy import select, update

from chttp_client import JournalError, codec, resumable
from chttp_client.testing import expire_leases, set_fault_hook
from chttp_core.schema import oplog_steps
from tests.client.conftest import Crash, crash_at

# -- the codec alone ---------------------------------------------------------------------


@pytest.mark.parametrize("text, fragment", [
    pytest.param('{"$bogus": 1}', "unknown tag '$bogus'", id="unknown-tag"),
    pytest.param('[1, {"$from-the-future": "x"}]', "unknown tag", id="nested-unknown-tag"),
    pytest.param('{"$bytes": "!!not base64"}', "malformed $bytes", id="bad-base64"),
    pytest.param('{"$bytes": 7}', "$bytes holds a int", id="bytes-not-a-string"),
    pytest.param('{"$datetime": "yesterday"}', "malformed $datetime", id="bad-datetime"),
    pytest.param('{"$date": "2026-02-30"}', "malformed $date", id="impossible-date"),
    pytest.param('{"$uuid": "not-a-uuid"}', "malformed $uuid", id="bad-uuid"),
    pytest.param('{"$decimal": "one"}', "malformed $decimal", id="bad-decimal"),
    pytest.param('{"$tuple": {"a": 1}}', "$tuple holds a dict", id="tuple-not-a-list"),
    pytest.param('{"$dict": [1]}', "$dict holds a list", id="dict-not-an-object"),
    pytest.param('{"value": ', "not JSON", id="truncated-json"),
    pytest.param("\x00\xff", "not JSON", id="binary-garbage"),
])
def test_unreadable_records_raise_codec_error_naming_where(text, fragment):
    with pytest.raises(codec.CodecError) as caught:
        codec.loads(text, where="oplog o-1 step 3")
    assert isinstance(caught.value, JournalError)
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("oplog o-1 step 3: unreadable oplog record")


@pytest.mark.parametrize("record", [
    pytest.param(None, id="none"), pytest.param({}, id="no-type"),
    pytest.param({"type": 3}, id="type-not-a-string"),
    pytest.param({"type": "builtins:ValueError", "args": {"$bogus": 1}}, id="args-unknown-tag"),
    pytest.param({"type": "builtins:ValueError", "args": 5}, id="args-not-a-list"),
])
def test_a_malformed_exception_record_is_a_codec_error(record):
    with pytest.raises(codec.CodecError):
        codec.rebuild_exception(record, where="oplog o-1 step 1")


def test_every_value_the_codec_writes_still_reads_back():
    value = {"$looks-like-a-tag": [b"\x00", (1, "a")], "n": None, "f": 1.5}
    assert codec.loads(codec.dumps(value)) == value


# -- the journal ---------------------------------------------------------------------------


def crashed_oplogs(journal, count: int) -> list[str]:
    """``count`` oplogs of one function, each crashed after recording three steps: two
    persists (journaled with the send's commit) and a certified send."""
    name = f"bad-data-{uuid.uuid4()}"

    def body(*, chttp_context):
        first = chttp_context.persist(random.random)
        second = chttp_context.persist(lambda: b"\x01\x02")
        chttp_context.post("http://receiver.test/escrow", json={"first": first})
        return [first, second]

    wrapped = resumable(journal, name=name)(body)
    set_fault_hook(journal, crash_at("after-step", 3))
    for _ in range(count):
        with pytest.raises(Crash):
            wrapped()
    set_fault_hook(journal, None)
    assert expire_leases(journal) >= count  # the crashed runs' leases lapse (database clock)
    return sorted(info.id for info in journal.list_open() if info.function == name)


def corrupt(journal, oplog_id: str, number: int, outcome: str) -> None:
    with journal.engine.begin() as connection:
        changed = connection.execute(
            update(oplog_steps)
            .where(oplog_steps.c.oplog_id == oplog_id, oplog_steps.c.number == number)
            .values(outcome=outcome)
        ).rowcount
    assert changed == 1


@pytest.mark.parametrize("outcome", [
    pytest.param('{"value": {"$from-a-newer-version": "x"}}', id="unknown-tag"),
    pytest.param('{"value": {"$bytes": "@@@"}}', id="malformed-bytes"),
    pytest.param('{"value": ', id="not-json"),
])
def test_resume_all_goes_on_with_the_other_oplogs(journal, outcome):
    bad, *good = crashed_oplogs(journal, 3)
    corrupt(journal, bad, 2, outcome)
    first = {o.oplog_id: o for o in journal.resume_all()}
    assert {oplog_id: first[oplog_id].status for oplog_id in good} == dict.fromkeys(good, "done")
    assert first[bad].status != "done"
    for oplog_id in good:
        assert journal.get(oplog_id).state == "done"
    # No crash loop: a second pass neither raises nor touches the finished ones.
    second = {o.oplog_id: o for o in journal.resume_all()}
    assert not set(good) & set(second)


@pytest.mark.parametrize("outcome", [
    pytest.param('{"value": {"$from-a-newer-version": "x"}}', id="unknown-tag"),
])
def test_an_unknown_tag_never_reaches_the_function_as_a_value(journal, outcome):
    """Before CodecError, ``{"$from-a-newer-version": "x"}`` was handed back as a dict and
    the replay finished "done" with a value the first run never saw."""
    bad, = crashed_oplogs(journal, 1)
    corrupt(journal, bad, 2, outcome)
    [result] = [o for o in journal.resume_all() if o.oplog_id == bad]
    assert result.status != "done"
    assert isinstance(result.error, JournalError)
    assert "unknown tag" in str(result.error)


def stored_outcome(journal, oplog_id: str, number: int) -> str:
    with journal.engine.connect() as connection:
        return connection.execute(
            select(oplog_steps.c.outcome)
            .where(oplog_steps.c.oplog_id == oplog_id, oplog_steps.c.number == number)).scalar_one()


@pytest.mark.parametrize("outcome", [
    pytest.param('{"value": {"$from-a-newer-version": "x"}}', id="unknown-tag"),
    pytest.param('{"value": ', id="not-json"),
    pytest.param('{"valu": "AQI="}', id="wrong-shape"),
])
def test_an_unreadable_step_is_quarantined_naming_oplog_and_step(journal, outcome):
    """Issue 23 item 7: quarantined, not abandoned. The oplog stays open and intact and is
    never run (no lease kept, no resume counted) while its record is unreadable; once
    the row is fixed — a hand edit undone, a renamed class restored — it resumes like
    any other, and an operator can still abandon it instead."""
    bad, = crashed_oplogs(journal, 1)
    original = stored_outcome(journal, bad, 2)
    corrupt(journal, bad, 2, outcome)
    for _ in range(3):  # as many start-ups as you like: reported each time, never run
        [result] = [o for o in journal.resume_all() if o.oplog_id == bad]
        assert result.status == "unreadable" and isinstance(result.error, codec.CodecError)
        assert f"oplog {bad} step 2: unreadable oplog record" in str(result.error)
    [info] = [o for o in journal.list(state="open") if o.id == bad]
    assert info.resume_attempts == 0 and info.abandoned_reason is None
    assert str(journal.store.unreadable_steps([bad])[bad]).startswith(f"oplog {bad} step 2:")
    with pytest.raises(codec.CodecError, match=f"oplog {bad} step 2"):
        journal.get(bad)
    corrupt(journal, bad, 2, original)
    [result] = [o for o in journal.resume_all() if o.oplog_id == bad]
    assert result.status == "done" and result.value[1] == b"\x01\x02"


def test_an_unreadable_oplog_can_be_abandoned(journal):
    bad, = crashed_oplogs(journal, 1)
    corrupt(journal, bad, 1, '{"value": ')
    journal.abandon(bad, "the row was hand-edited")
    [info] = journal.list(state="abandoned")
    assert (info.id, info.status, info.abandoned_reason) == (bad, "abandoned", "the row was hand-edited")
    assert [o for o in journal.resume_all() if o.oplog_id == bad] == []
