"""A send's answer is buffered until the oplog's next commit; its acknowledgement waits for it.

chttp_client.context, "Durability arrangement": the answer of a send is written by the
next send's intent commit or the finish commit. A crash in between leaves the step
``recorded``; the resume resends the same id and the receiver replays its stored
response, which it still has because the DELETE acknowledging it is only queued after
the commit that made the answer durable.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from chttp_client import resumable
from chttp_core.schema import messages
from chttp_client.testing import set_fault_hook
from tests.client.conftest import BASE, Crash, crash_at
from tests.client.receiver import count_runs


class Recording(httpx.BaseTransport):
    """The real receiver behind WSGITransport, logging each exchange in order."""

    def __init__(self, app) -> None:
        self.inner = httpx.WSGITransport(app=app)
        self.log: list[tuple[str, str, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "DELETE":
            target = request.url.path.rsplit("/", 1)[-1]
        else:
            target = request.headers.get("x-message-id", "")
        self.log.append((request.method, target, response.headers.get("idempotent-replayed")))
        return response


def message_state(receiver, message_id: str) -> str:
    with receiver.engine.connect() as connection:
        return connection.execute(select(messages.c.state).where(
            messages.c.message_id == message_id)).scalar_one()


@pytest.mark.parametrize("point", [
    pytest.param(("send-answered", 1), id="answered-not-buffered"),
    pytest.param(("after-step", 1), id="answer-buffered"),
    pytest.param(("before-step", 3), id="just-before-the-next-commit"),
])
def test_crash_before_the_answer_is_committed_resends_and_acknowledges_only_afterwards(
        make_journal, receiver, point):
    transport = Recording(receiver)
    journal = make_journal(transport=transport)
    answers = []

    @resumable(journal)
    def f(*, chttp_context):
        first = chttp_context.post(f"{BASE}/escrow", json={"n": 1}).json()["random number"]
        answers.append(first)
        chttp_context.persist("between")
        chttp_context.post(f"{BASE}/escrow", json={"n": 2, "after": first})
        return first

    set_fault_hook(journal, crash_at(*point))
    with pytest.raises(Crash):
        f()
    set_fault_hook(journal, None)
    journal.wait_for_acknowledgements()
    [oplog] = journal.list_open()
    [send] = journal.get(oplog.id).steps  # the answer was not committed …
    assert (send.state, send.response) == ("recorded", None)
    message_id = send.message_id
    assert [m for m, *_ in transport.log] == ["POST"]  # … so it was not acknowledged either
    assert message_state(receiver, message_id) != "acknowledged"

    result = journal.resume(oplog.id, force=True)
    journal.wait_for_acknowledgements()

    # The resume resent the same id and the receiver replayed its stored answer.
    assert transport.log[1] == ("POST", message_id, "true")
    assert count_runs(receiver.engine, message_id) == 1
    # Crashed at before-step 3, the first run had read the answer: the same one came back.
    assert answers == [result] * (2 if point[0] == "before-step" else 1)
    # Acknowledged exactly once, and only after the replayed answer was committed.
    deletes = [i for i, (method, target, _) in enumerate(transport.log)
               if method == "DELETE" and target == message_id]
    assert len(deletes) == 1 and deletes[0] > 1
    steps = journal.get(oplog.id).steps
    assert steps[0].state == "done" and steps[0].acknowledged_at is not None
    assert message_state(receiver, message_id) == "acknowledged"
    assert count_runs(receiver.engine) == 2


def test_the_next_intent_commit_records_the_answer_and_then_acknowledges_it(make_journal, receiver):
    transport = Recording(receiver)
    journal = make_journal(transport=transport)

    @resumable(journal)
    def f(*, chttp_context):
        chttp_context.post(f"{BASE}/escrow", json={"n": 1})
        chttp_context.post(f"{BASE}/escrow", json={"n": 2})

    set_fault_hook(journal, crash_at("send-recorded", 2))  # right after the commit carrying answer 1
    with pytest.raises(Crash):
        f()
    set_fault_hook(journal, None)
    journal.wait_for_acknowledgements()
    [oplog] = journal.list_open()
    first, second = journal.get(oplog.id).steps
    assert (first.state, first.response["status"]) == ("done", 201)
    assert second.state == "recorded"
    assert [(m, t) for m, t, _ in transport.log] == [("POST", first.message_id),
                                                    ("DELETE", first.message_id)]
    journal.resume(oplog.id, force=True)
    assert count_runs(receiver.engine) == 2
