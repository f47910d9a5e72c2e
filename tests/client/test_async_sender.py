"""``async def`` resumable functions (issue 19, item 4) against a real receiver on loopback.

The receiver is the sender tests' certified app served by waitress on 127.0.0.1
(``httpx.WSGITransport`` is synchronous, and an ``async def`` function's sends go through
an ``httpx.AsyncClient``); every journal runs on SQLite and on PostgreSQL (``db_url``).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import sqlite3
import threading

import pytest
from sqlalchemy import select

from chttp_client import (
    AsyncResumableContext,
    ConcurrentStepsError,
    Journal,
    NonDeterminismError,
    RetryPolicy,
    resumable,
)
from chttp_client.testing import CrashResumeFailure, check_crash_resume, expire_leases, set_fault_hook
from chttp_core.schema import oplogs
from tests.client.conftest import Crash, crash_at
from tests.client.receiver import count_runs, make_receiver, runs
from tests.server.live import serve_in_thread

pytestmark = pytest.mark.slow


class Gate:
    """WSGI in front of the receiver: ``/gated`` waits for ``release`` (then is ``/escrow``)."""

    def __init__(self, app) -> None:
        self.app = app
        self.engine = app.engine
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/gated":
            self.entered.set()
            self.release.wait(60)
            environ["PATH_INFO"] = "/escrow"
        return self.app(environ, start_response)


@pytest.fixture
def live(tmp_path):
    gate = Gate(make_receiver(f"sqlite:///{tmp_path / 'receiver.db'}"))
    with serve_in_thread(gate, threads=16) as base:
        yield gate, base
    gate.release.set()
    gate.engine.dispose()


@pytest.fixture
def journal(db_url):
    with Journal(db_url, retry=RetryPolicy(initial_backoff=0.01, jitter=False)) as journal:
        yield journal


def lease_owner(journal: Journal, oplog_id: str) -> str | None:
    with journal.engine.connect() as connection:
        return connection.execute(select(oplogs.c.lease_owner).where(oplogs.c.id == oplog_id)).scalar_one()


async def draw(bound: int) -> int:
    await asyncio.sleep(0)
    return secrets.randbelow(bound)


def test_an_async_function_runs_under_asyncio_run_and_records_its_steps(journal, live):
    gate, base = live

    @resumable(journal)
    async def transfer(url, amount, *, chttp_context):
        assert isinstance(chttp_context, AsyncResumableContext)
        ref = await chttp_context.persist(draw, 10**6)           # a coroutine function
        twice = await chttp_context.persist(lambda: ref * 2)      # a plain callable
        response = await chttp_context.post(url, json={"ref": ref, "amount": amount})
        when = await chttp_context.now()
        return [ref, twice, response.json()["message_id"], when.isoformat()]

    coroutine = transfer(f"{base}/escrow", 5)
    assert asyncio.iscoroutine(coroutine)
    ref, twice, message_id, when = asyncio.run(coroutine)
    assert twice == 2 * ref

    [oplog] = journal.list()
    info = journal.get(oplog.id)
    assert info.state == "done" and info.result["value"][2] == message_id
    assert [(s.number, s.kind, s.state) for s in info.steps] == [
        (1, "persist", "done"), (2, "persist", "done"), (3, "send", "done"), (4, "persist", "done")]
    assert info.steps[0].name.endswith("test_async_sender.draw")
    assert info.steps[3].name == "chttp_client.context._utcnow"  # as a def function's now()
    assert runs(gate.engine) == [(message_id, "/escrow", f'{{"ref":{ref},"amount":5}}')]
    assert lease_owner(journal, oplog.id) is None


def test_the_same_oplog_replays_in_a_def_and_an_async_def_function_alike(journal, live):
    """One step logic: a crashed async run resumes with the ids and values it recorded."""
    gate, base = live

    @resumable(journal)
    async def transfer(url, *, chttp_context):
        ref = await chttp_context.persist(random.random)
        first = await chttp_context.post(url, json={"ref": ref})
        second = await chttp_context.put(url, json={"after": first.json()["random number"]})
        return [first.json()["message_id"], second.json()["message_id"]]

    set_fault_hook(journal, crash_at("send-answered", 3))
    with pytest.raises(Crash):
        asyncio.run(transfer(f"{base}/escrow"))
    set_fault_hook(journal, None)
    [oplog] = journal.list_open()
    recorded = journal.get(oplog.id).steps
    assert [(s.kind, s.state) for s in recorded] == [
        ("persist", "done"), ("send", "done"), ("send", "recorded")]
    assert count_runs(gate.engine) == 2                    # the second send was answered

    assert journal.resume(oplog.id, force=True) == [recorded[1].message_id, recorded[2].message_id]
    assert [r[0] for r in runs(gate.engine)] == [recorded[1].message_id, recorded[2].message_id]


def test_a_hundred_functions_under_one_gather_keep_their_own_oplogs_ids_and_leases(journal, live):
    gate, base = live
    owners: dict[str, str | None] = {}

    def note_owner(event) -> None:   # read while the intent commit is done, before sending
        if event.point == "send-recorded":
            owners[event.oplog_id] = lease_owner(journal, event.oplog_id)

    @resumable(journal)
    async def transfer(url, n, *, chttp_context):
        ref = await chttp_context.persist(draw, 10**6)
        response = await chttp_context.post(url, json={"n": n, "ref": ref})
        return [n, ref, response.json()["message_id"]]

    async def main():
        return await asyncio.gather(*(transfer(f"{base}/escrow", n) for n in range(100)))

    set_fault_hook(journal, note_owner)
    results = asyncio.run(main())
    set_fault_hook(journal, None)

    assert [n for n, _ref, _id in results] == list(range(100))
    infos = [journal.get(oplog.id) for oplog in journal.list()]
    assert len(infos) == 100 and {info.state for info in infos} == {"done"}
    by_n = {info.arguments["args"][1]: info for info in infos}
    for n, ref, message_id in results:
        info = by_n[n]
        [persisted, send] = info.steps
        assert persisted.outcome == {"value": ref} and send.message_id == message_id
        assert info.result == {"value": [n, ref, message_id]}
    assert len({message_id for _n, _ref, message_id in results}) == 100
    # each run held a lease of its own while it sent, and gave it up at its end
    assert len(owners) == 100 and None not in owners.values() and len(set(owners.values())) == 100
    assert {lease_owner(journal, info.id) for info in infos} == {None}
    # the receiver ran each message once, with that function's body
    assert sorted(runs(gate.engine)) == sorted(
        (message_id, "/escrow", f'{{"n":{n},"ref":{ref}}}') for n, ref, message_id in results)


def test_two_sends_of_one_function_at_once_are_refused_and_nothing_is_sent(journal, live):
    gate, base = live

    @resumable(journal)
    async def both(url, *, chttp_context):
        return await asyncio.gather(chttp_context.post(url, json={"a": 1}),
                                    chttp_context.post(url, json={"b": 2}))

    with pytest.raises(ConcurrentStepsError) as refused:
        asyncio.run(both(f"{base}/escrow"))
    assert isinstance(refused.value, NonDeterminismError) and refused.value.step == 2
    assert "still in flight" in str(refused.value) and "POST" in refused.value.in_flight
    [oplog] = journal.list_open()            # nothing recorded as the function's outcome
    # Freed by whichever of the two tasks ends the run last, before asyncio.run returns:
    # the refused task's release may run before the first task's intent commit inserts
    # the oplog row (leased), so that task's own release must follow its commit — even
    # when asyncio.run's end cancels it mid-commit (tests/client/test_effects.py).
    assert lease_owner(journal, oplog.id) is None

    [outcome] = journal.resume_all()         # the code is wrong: dead-lettered, as a divergence
    assert outcome.status == "abandoned" and "still in flight" in str(outcome.error)
    assert count_runs(gate.engine) == 0      # neither the first run nor the resume sent anything

    @resumable(journal)
    async def one_after_the_other(url, *, chttp_context):
        first = await chttp_context.post(url, json={"a": 1})
        second = await chttp_context.post(url, json={"b": 2})
        return [first.status_code, second.status_code]

    assert asyncio.run(one_after_the_other(f"{base}/escrow")) == [201, 201]


def test_a_task_cancelled_mid_send_leaves_its_oplog_resumable_with_the_same_id(journal, live):
    gate, base = live

    @resumable(journal)
    async def transfer(url, *, chttp_context):
        ref = await chttp_context.persist(draw, 10**6)
        response = await chttp_context.post(url, json={"ref": ref})
        return response.json()["message_id"]

    async def main():
        task = asyncio.create_task(transfer(f"{base}/gated"))
        await asyncio.to_thread(gate.entered.wait, 60)     # the request is at the receiver
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    [oplog] = journal.list_open()
    [persisted, send] = journal.get(oplog.id).steps
    assert send.state == "recorded" and lease_owner(journal, oplog.id) is None
    gate.release.set()     # the abandoned request runs at the receiver meanwhile, or now

    # resumable at once in this very process (the lease was given up), same id and body
    [outcome] = asyncio.run(journal.resume_all_async())
    assert outcome.status == "done" and outcome.value == send.message_id
    assert runs(gate.engine) == [(send.message_id, "/escrow", f'{{"ref":{persisted.outcome["value"]}}}')]


def test_check_crash_resume_works_for_async_functions(journal, live):
    gate, base = live

    @resumable(journal)
    async def start_transferring_foo(escrow_url, amount, *, chttp_context):
        local = await chttp_context.persist(draw, 10**6)
        response = await chttp_context.post(escrow_url, json={"amount": amount})
        return local + response.json()["random number"]

    report = check_crash_resume(start_transferring_foo, f"{base}/escrow", 5)
    assert [(c.step, c.point) for c in report.cases] == [
        (1, "before-step"), (1, "after-step"),
        (2, "before-step"), (2, "send-recorded"), (2, "send-answered"), (2, "after-step"),
    ]
    assert report.failures == [] and count_runs(gate.engine) == 1

    @resumable(journal)
    async def buggy(escrow_url, *, chttp_context):
        await chttp_context.persist(draw, 100)
        await chttp_context.post(escrow_url, json={"n": random.random()})  # forgot persist()

    with pytest.raises(CrashResumeFailure) as caught:
        check_crash_resume(buggy, f"{base}/escrow")
    assert caught.value.step == 2


def test_the_loop_keeps_running_while_the_journal_and_the_receiver_are_slow(journal, live, db_url):
    """A ticker coroutine ticks while the intent commit waits for a database lock and
    while the send waits for the receiver; each wait is ended *by the ticker*, which can
    only happen if the loop was free (a blocked loop ends it by the 60 s fallback and fails)."""
    gate, base = live
    journal.ensure_schema()
    ticks = 0
    ended_by: dict[str, str] = {}

    @resumable(journal)
    async def transfer(url, *, chttp_context):
        response = await chttp_context.post(url, json={})
        return response.status_code

    locked, unlock = threading.Event(), threading.Event()

    def hold_the_journal() -> None:       # another connection holds what the commit needs
        if db_url.startswith("sqlite"):
            connection = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
            connection.execute("BEGIN IMMEDIATE")
        else:
            connection = journal.engine.raw_connection()
            connection.cursor().execute("LOCK TABLE chttp_oplogs IN EXCLUSIVE MODE")
        locked.set()
        ended_by["journal"] = "ticker" if unlock.wait(60) else "fallback"
        connection.rollback()
        connection.close()

    holder = threading.Thread(target=hold_the_journal)
    holder.start()
    assert locked.wait(60)

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1
            if ticks == 20:
                unlock.set()                        # the journal's lock goes
            if ticks >= 40 and gate.entered.is_set() and "receiver" not in ended_by:
                ended_by["receiver"] = "ticker"
                gate.release.set()                  # the receiver answers

    async def main():
        ticking = asyncio.create_task(ticker())
        try:
            return await transfer(f"{base}/gated")
        finally:
            ticking.cancel()

    try:
        assert asyncio.run(main()) == 201
    finally:
        unlock.set()
        holder.join(60)
    assert ended_by == {"journal": "ticker", "receiver": "ticker"}
    assert count_runs(gate.engine) == 1


def test_resume_all_async_resumes_def_and_async_def_oplogs_from_a_running_loop(journal, live):
    gate, base = live

    @resumable(journal)
    def plain(url, *, chttp_context):
        return chttp_context.post(url, json={"kind": "def"}).json()["message_id"]

    @resumable(journal)
    async def awaited(url, *, chttp_context):
        return (await chttp_context.post(url, json={"kind": "async"})).json()["message_id"]

    set_fault_hook(journal, crash_at("send-recorded", 1))
    with pytest.raises(Crash):
        plain(f"{base}/escrow")
    with pytest.raises(Crash):
        asyncio.run(awaited(f"{base}/escrow"))
    set_fault_hook(journal, None)
    expire_leases(journal)             # the crashed runs' leases lapse, by the database's clock

    async def main():
        return await journal.resume_all_async()

    outcomes = asyncio.run(main())
    assert sorted(o.status for o in outcomes) == ["done", "done"]
    recorded = {o.oplog_id: journal.get(o.oplog_id).steps[0].message_id for o in outcomes}
    assert {o.oplog_id: o.value for o in outcomes} == recorded
    assert sorted(r[0] for r in runs(gate.engine)) == sorted(recorded.values())


def test_an_async_function_can_be_run_from_a_sync_call_inside_a_running_loop(journal, live):
    """``journal.run``/``resume`` are sync: inside a loop they use a worker thread's loop."""
    gate, base = live

    @resumable(journal)
    async def transfer(url, *, chttp_context):
        return (await chttp_context.post(url, json={})).status_code

    async def main():
        return journal.run(transfer.chttp_name, 1, transfer.chttp_function, (f"{base}/escrow",), {})

    assert asyncio.run(main()) == 201 and count_runs(gate.engine) == 1


def test_a_lease_taken_over_meanwhile_fails_the_async_run_at_its_next_commit(journal, live):
    from chttp_client import OplogTakenOverError

    gate, base = live

    @resumable(journal)
    async def transfer(url, *, chttp_context):
        await chttp_context.post(url, json={})
        return "mine"

    async def main():
        task = asyncio.create_task(transfer(f"{base}/gated"))
        await asyncio.to_thread(gate.entered.wait, 60)
        [oplog] = await asyncio.to_thread(journal.list_open)
        await asyncio.to_thread(journal.take_lease, oplog.id, force=True)
        gate.release.set()
        with pytest.raises(OplogTakenOverError):
            await task

    asyncio.run(main())
    expire_leases(journal)               # the taker "died"; its lease lapses
    [outcome] = journal.resume_all()
    assert outcome.status == "done" and outcome.value == "mine" and count_runs(gate.engine) == 1


def test_a_def_and_an_async_def_function_run_the_same_journal_statements(journal, live):
    """One step logic, one oplog SQL: the two kinds of function, taking the same steps,
    make the journal execute the same statements in the same order."""
    from sqlalchemy import event

    gate, base = live
    journal.acknowledge = False          # background DELETEs would interleave their marks
    journal.ensure_schema()
    seen: list[str] = []

    def statement(_connection, _cursor, text, _parameters, _context, _many) -> None:
        seen.append(text)

    @resumable(journal)
    def plain(url, *, chttp_context):
        ref = chttp_context.persist(random.random)
        return chttp_context.post(url, json={"ref": ref}).status_code

    @resumable(journal)
    async def awaited(url, *, chttp_context):
        ref = await chttp_context.persist(random.random)
        return (await chttp_context.post(url, json={"ref": ref})).status_code

    event.listen(journal.engine, "before_cursor_execute", statement)
    try:
        assert plain(f"{base}/escrow") == 201
        of_def, seen[:] = list(seen), []
        assert asyncio.run(awaited(f"{base}/escrow")) == 201
        of_async = list(seen)
    finally:
        event.remove(journal.engine, "before_cursor_execute", statement)
    assert len(of_def) >= 4 and of_async == of_def


def test_an_async_handler_context_replays_the_same_derived_ids_as_a_sync_one(journal, live):
    """What an ASGI front end's ``current_message().post()`` stands on: the handler's
    oplog and derived ids are the same for an async and a sync handler run."""
    from chttp_client.incoming import (
        close_incoming_context,
        close_incoming_context_async,
        derived_message_id,
        open_incoming_context,
        open_incoming_context_async,
    )

    gate, base = live

    async def handler_run():
        async with journal.async_clients.client() as client:
            context = await open_incoming_context_async(journal, scope="s", message_id="in-1",
                                                        client=client)
            nonce = await context.persist(secrets.randbelow, 10**6)
            answer = await context.post(f"{base}/escrow", json={"nonce": nonce})
            await close_incoming_context_async(context)
        return nonce, answer.json()

    nonce, first = asyncio.run(handler_run())
    assert first["message_id"] == derived_message_id("s", "in-1", 2)
    again = asyncio.run(handler_run())          # a retry of the incoming message: replayed
    assert again == (nonce, first)
    context = open_incoming_context(journal, scope="s", message_id="in-1", send_deadline=None)
    assert context.persist(secrets.randbelow, 10**6) == nonce   # a sync run replays the record
    assert context.post(f"{base}/escrow", json={"nonce": nonce}).json() == first
    close_incoming_context(context)
    assert runs(gate.engine) == [(first["message_id"], "/escrow", f'{{"nonce":{nonce}}}')]


def test_async_sends_retry_by_the_same_rules_and_wait_with_async_sleep(db_url, live):
    """The retry loop is the sync one (sending.deliver_steps): 503 twice, then the answer;
    the waits go to ``Journal(async_sleep=…)``, the same backoff a def function gets."""
    gate, base = live
    front = gate.app
    front.failures, front.status, front.retry_after = 2, 503, None
    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)

    policy = RetryPolicy(initial_backoff=0.5, multiplier=2.0, jitter=False)
    with Journal(db_url, retry=policy, async_sleep=fake_sleep) as journal:
        @resumable(journal)
        async def send(url, *, chttp_context):
            return (await chttp_context.post(url, json={})).status_code

        assert asyncio.run(send(f"{base}/flaky")) == 201
        [oplog] = journal.list()
        [step] = journal.get(oplog.id).steps
    assert waited == [0.5, 1.0]
    assert front.seen == {step.message_id: 3} and count_runs(gate.engine) == 1


def test_a_task_cancelled_during_its_intent_commit_waits_for_it_then_frees_the_lease(journal, live):
    """A journal write in a worker thread cannot be interrupted: the cancelled task lets
    it land, then gives the lease up, so the oplog is open, unleased and resumable."""
    from sqlalchemy import event

    gate, base = live
    journal.ensure_schema()
    inside, go_on = threading.Event(), threading.Event()

    def hold_the_first_step_insert(_connection, _cursor, text, *_args) -> None:
        if text.lstrip().upper().startswith("INSERT INTO CHTTP_OPLOG_STEPS") and not inside.is_set():
            inside.set()
            go_on.wait(60)

    @resumable(journal)
    async def transfer(url, *, chttp_context):
        return (await chttp_context.post(url, json={"n": 1})).json()["message_id"]

    async def main():
        task = asyncio.create_task(transfer(f"{base}/escrow"))
        assert await asyncio.to_thread(inside.wait, 60)    # the intent commit is mid-transaction
        task.cancel()
        for _ in range(20):
            await asyncio.sleep(0)
        still_waiting = not task.done()                     # for the journal, not abandoning it
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return still_waiting

    event.listen(journal.engine, "before_cursor_execute", hold_the_first_step_insert)
    try:
        assert asyncio.run(main()) is True
    finally:
        go_on.set()
        event.remove(journal.engine, "before_cursor_execute", hold_the_first_step_insert)
    [oplog] = journal.list_open()
    [send] = journal.get(oplog.id).steps
    assert send.state == "recorded" and lease_owner(journal, oplog.id) is None
    assert count_runs(gate.engine) == 0                     # cancelled before it was sent
    [outcome] = journal.resume_all()
    assert outcome.status == "done" and outcome.value == send.message_id
    assert [r[0] for r in runs(gate.engine)] == [send.message_id]


def test_runs_of_one_loop_share_one_client_closed_when_the_loop_ends():
    """Runs awaited one after the other reuse the loop's client (making one costs more
    than a run); ``asyncio.run`` ending closes it, and the next loop gets its own."""
    import httpx

    from chttp_client.loop_clients import LoopClients

    made: list[httpx.AsyncClient] = []

    def make() -> httpx.AsyncClient:
        made.append(httpx.AsyncClient())
        return made[-1]

    clients = LoopClients(make)

    async def main() -> bool:
        async with clients.client() as first:
            pass
        async with clients.client() as second:
            return first is second and not first.is_closed

    assert asyncio.run(main()) is True
    assert len(made) == 1 and made[0].is_closed
    assert asyncio.run(main()) is True
    assert len(made) == 2 and made[1].is_closed


def test_async_transport_serves_the_per_loop_clients(db_url):
    """``Journal(async_transport=httpx.ASGITransport(app))``: an ASGI app in process, as
    tests of an ASGI receiver use it; the certified headers reach it on every attempt."""
    import json as jsonlib

    import httpx

    seen: list[dict[str, str]] = []

    async def app(scope, receive, send):
        assert scope["type"] == "http"
        seen.append({key.decode(): value.decode() for key, value in scope["headers"]})
        body = jsonlib.dumps({"id": len(seen)}).encode()
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    with Journal(db_url, async_transport=httpx.ASGITransport(app=app)) as journal:
        @resumable(journal)
        async def send(*, chttp_context):
            return (await chttp_context.post("http://asgi.test/orders", json={})).json()["id"]

        assert asyncio.run(send()) == 1 and asyncio.run(send()) == 2
        message_ids = [journal.get(o.id).steps[0].message_id for o in journal.list()]
    assert sorted(h["x-message-id"] for h in seen) == sorted(message_ids)
    assert all("x-message-first-sent" in h for h in seen)
