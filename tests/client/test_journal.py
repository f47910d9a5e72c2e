"""The journal without HTTP: persist, replay after a crash, results, exceptions, versions."""

from __future__ import annotations

import logging
import random
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import event

from chttp_client import (
    Journal,
    NonDeterminismError,
    RecordedError,
    UnknownFunctionError,
    resumable,
)
from chttp_client.journal import register, unregister
from chttp_client.testing import set_fault_hook
from tests.client.conftest import Crash, crash_at


class Boom(ValueError):
    pass


def test_persist_value_and_callable_and_result(journal):
    @resumable(journal)
    def f(a, b=2, *, chttp_context):
        x = chttp_context.persist(random.random)
        y = chttp_context.persist(b"\x00\xff")
        z = chttp_context.persist(lambda k: {"k": k, "when": datetime(2026, 1, 1, tzinfo=timezone.utc)}, 7)
        return {"a": a, "b": b, "x": x, "y": y, "z": z}

    result = f(1, b=Decimal("2.50"))
    assert result["b"] == Decimal("2.50") and result["y"] == b"\x00\xff"
    [info] = journal.list()
    assert info.state == "done"
    assert info.arguments == {"args": [1], "kwargs": {"b": Decimal("2.50")}}
    full = journal.get(info.id)
    assert [(s.kind, s.name) for s in full.steps] == [
        ("persist", "builtins.Random.random"),
        ("persist", "value"),
        ("persist", f"{__name__}.test_persist_value_and_callable_and_result.<locals>.f.<locals>.<lambda>"),
    ]
    assert full.steps[0].outcome == {"value": result["x"]}


def test_unrecordable_value_is_refused_on_the_first_run(journal):
    @resumable(journal)
    def f(*, chttp_context):
        return chttp_context.persist(object())

    with pytest.raises(TypeError, match="cannot record"):
        f()


def test_replay_after_crash_returns_recorded_values(journal):
    draws = []

    @resumable(journal)
    def f(*, chttp_context):
        values = [chttp_context.persist(random.random) for _ in range(3)]
        draws.append(values)
        chttp_context.post("http://receiver.test/escrow", json={"values": values})
        return values

    set_fault_hook(journal, crash_at("after-step", 4))
    with pytest.raises(Crash):
        f()
    set_fault_hook(journal, None)
    [open_oplog] = journal.list_open()
    assert journal.resume(open_oplog.id, force=True) == draws[0]
    assert journal.get(open_oplog.id).state == "done"


def test_persisted_exception_is_reraised_on_replay(journal):
    calls = []

    def flaky():
        calls.append(1)
        raise Boom("no luck", 3)

    @resumable(journal)
    def f(*, chttp_context):
        try:
            chttp_context.persist(flaky)
        except Boom as error:
            caught = list(error.args)
        chttp_context.post("http://receiver.test/escrow", json={})
        return caught

    set_fault_hook(journal, crash_at("after-step", 2))
    with pytest.raises(Crash):
        f()
    set_fault_hook(journal, None)
    [oplog] = journal.list_open()
    assert journal.resume(oplog.id, force=True) == ["no luck", 3]
    assert len(calls) == 1


def test_function_exception_is_recorded_and_final(journal):
    @resumable(journal)
    def f(*, chttp_context):
        raise Boom("bad", 1)

    with pytest.raises(Boom):
        f()
    [info] = journal.list()
    assert info.state == "failed"
    assert info.result["error"]["type"] == f"{__name__}:Boom"
    with pytest.raises(Boom, match="bad"):
        journal.resume(info.id)


def test_non_determinism_names_both_steps_and_leaves_the_oplog_intact(journal):
    mode = {"url": "http://receiver.test/escrow"}

    @resumable(journal, name="nondet")
    def f(*, chttp_context):
        chttp_context.persist(1)
        chttp_context.post(mode["url"], json={"n": 1})
        chttp_context.post("http://receiver.test/escrow", json={"n": 2})

    set_fault_hook(journal, crash_at("before-step", 3))
    with pytest.raises(Crash):
        f()
    set_fault_hook(journal, None)
    [oplog] = journal.list_open()
    before = journal.get(oplog.id)
    mode["url"] = "http://receiver.test/other"
    with pytest.raises(NonDeterminismError) as caught:
        journal.resume(oplog.id, force=True)
    assert caught.value.step == 2
    assert "POST http://receiver.test/escrow" in caught.value.expected
    assert "POST http://receiver.test/other" in caught.value.got
    assert str(caught.value).count("POST") == 2
    after = journal.get(oplog.id)
    assert after.state == "open" and after.steps == before.steps


def test_swallowed_non_determinism_still_refuses_to_record(journal):
    source = {"draw": random.random}

    @resumable(journal, name="swallow")
    def f(*, chttp_context):
        try:
            chttp_context.persist(source["draw"])
            chttp_context.post("http://receiver.test/escrow", json={})
        except Exception:  # a careless function hiding every error
            pass
        return "finished"

    set_fault_hook(journal, crash_at("after-step", 2))
    with pytest.raises(Crash):
        f()
    set_fault_hook(journal, None)
    source["draw"] = random.randrange  # another callable: the replay diverges at step 1
    [oplog] = journal.list_open()
    before = journal.get(oplog.id)
    with pytest.raises(NonDeterminismError, match="step 1"):
        journal.resume(oplog.id, force=True)
    assert journal.get(oplog.id).steps == before.steps
    assert journal.get(oplog.id).state == "open"


def test_versions_replay_with_the_version_that_wrote_the_oplog(journal):
    name = f"versioned-{uuid.uuid4()}"

    @resumable(journal, name=name, version=1)
    def v1(*, chttp_context):
        chttp_context.post("http://receiver.test/escrow", json={"v": 1})
        return "v1"

    set_fault_hook(journal, crash_at("after-step", 1))
    with pytest.raises(Crash):
        v1()
    set_fault_hook(journal, None)

    @resumable(journal, name=name, version=2)
    def v2(*, chttp_context):
        chttp_context.persist("new first step")
        return "v2"

    assert v2() == "v2"
    [oplog] = journal.list_open()
    assert oplog.version == 1
    assert journal.resume(oplog.id, force=True) == "v1"


def test_unregistered_version_is_refused_and_left_open(journal):
    name = f"gone-{uuid.uuid4()}"

    def v1(*, chttp_context):
        chttp_context.post("http://receiver.test/escrow", json={})

    register(name, 1, v1)
    wrapped = resumable(journal, name=name, version=1)(v1)
    set_fault_hook(journal, crash_at("after-step", 1))
    with pytest.raises(Crash):
        wrapped()
    set_fault_hook(journal, None)
    unregister(name, 1)
    resumable(journal, name=name, version=3)(v1)
    [oplog] = journal.list_open()
    with pytest.raises(UnknownFunctionError, match="version 1") as caught:
        journal.resume(oplog.id, force=True)
    assert caught.value.registered == [3]
    outcomes = [o for o in journal.resume_all() if o.oplog_id == oplog.id]
    assert [o.status for o in outcomes] == ["refused"]
    assert journal.get(oplog.id).state == "open"


def test_resume_all_logs_every_busy_and_refused_oplog_as_a_warning(make_journal, caplog):
    journal = make_journal(lease=timedelta(hours=1))  # this live process keeps its leases
    busy_name, gone_name = f"busy-{uuid.uuid4()}", f"gone-{uuid.uuid4()}"

    def body(*, chttp_context):
        chttp_context.post("http://receiver.test/escrow", json={})

    set_fault_hook(journal, crash_at("send-recorded", 1))
    for name in (busy_name, gone_name):
        with pytest.raises(Crash):
            resumable(journal, name=name)(body)()
    set_fault_hook(journal, None)
    by_name = {info.function: info.id for info in journal.list_open()}
    unregister(gone_name)

    with caplog.at_level(logging.WARNING, logger="chttp_client"):
        outcomes = {o.oplog_id: o.status for o in journal.resume_all()}
    assert outcomes == {by_name[busy_name]: "busy", by_name[gone_name]: "refused"}
    warnings = {r.getMessage() for r in caplog.records
                if r.name == "chttp_client" and r.levelno == logging.WARNING}
    assert warnings == {
        f"chttp: oplog {by_name[busy_name]} ({busy_name} v1) not resumed, busy: "
        f"oplog {by_name[busy_name]} is being run by {journal.get(by_name[busy_name]).lease_owner}",
        f"chttp: oplog {by_name[gone_name]} ({gone_name} v1) not resumed, refused: "
        f"{UnknownFunctionError(by_name[gone_name], gone_name, 1, [])}",
    }


def test_unrebuildable_exception_comes_back_as_recorded_error(journal):
    class Local(Exception):  # not importable by its path
        pass

    @resumable(journal)
    def f(*, chttp_context):
        raise Local("x")

    with pytest.raises(Local):
        f()
    [info] = journal.list()
    with pytest.raises(RecordedError, match="Local: x"):
        journal.resume(info.id)


def count_commits(engine) -> list[int]:
    commits = [0]

    @event.listens_for(engine, "commit")
    def _on_commit(_conn):
        commits[0] += 1

    return commits


@pytest.mark.parametrize(("sends", "persists", "expected"), [
    pytest.param(1, 0, 2, id="1-send-no-persist"),
    pytest.param(1, 5, 2, id="1-send-5-persists"),
    pytest.param(3, 0, 4, id="3-sends-no-persist"),
    pytest.param(3, 5, 4, id="3-sends-5-persists-each"),
])
def test_n_plus_one_commits_for_n_sends_however_many_persists(journal, sends, persists, expected):
    """Each send's intent commit carries the previous answer; the finish carries the last."""

    @resumable(journal)
    def f(*, chttp_context):
        for _ in range(sends):
            for _ in range(persists):
                chttp_context.persist(random.random)
            chttp_context.post("http://receiver.test/escrow", json={})
        return "ok"

    journal.acknowledge = False
    journal.ensure_schema()
    commits = count_commits(journal.engine)
    assert f() == "ok"
    assert commits[0] == expected == sends + 1
    [info] = journal.list()
    steps = journal.get(info.id).steps
    assert len(steps) == sends * (persists + 1)
    assert {s.state for s in steps} == {"done"}
    assert all(s.response["status"] == 201 for s in steps if s.kind == "send")


def test_journal_needs_exactly_one_store():
    from chttp_client import JournalError

    with pytest.raises(JournalError):
        Journal()


def test_a_replay_with_other_request_headers_is_non_deterministic(journal):
    headers = {"X-Nonce": "first"}

    @resumable(journal, name=f"headers-{uuid.uuid4()}")
    def f(*, chttp_context):
        return chttp_context.post("http://receiver.test/escrow", json={}, headers=headers).status_code

    set_fault_hook(journal, crash_at("send-recorded", 1))
    with pytest.raises(Crash):
        f()
    set_fault_hook(journal, None)
    [oplog] = journal.list_open()
    before = journal.get(oplog.id)
    assert ["x-nonce", "first"] in before.steps[0].request["headers"]
    headers["X-Nonce"] = "second"  # the same method, URL and body: only a header differs
    with pytest.raises(NonDeterminismError) as caught:
        journal.resume(oplog.id, force=True)
    assert caught.value.step == 1
    assert "'first'" in caught.value.expected and "'second'" in caught.value.got
    assert journal.get(oplog.id).steps == before.steps
    headers["X-Nonce"] = "first"  # the recorded headers again: it resumes
    assert journal.resume(oplog.id, force=True) == 201
