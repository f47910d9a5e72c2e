"""A store the console tests fill through the real receiver and the real sender.

One database holds both halves (as the escrow's does): messages arrive through
``CertifiedMiddleware`` (WebTest in process, and real HTTP from a journal's certified
sends to a waitress thread), oplogs are written by a real :class:`~chttp_client.Journal`
running ``@resumable`` functions. A few rows are inserted directly, as a store written
by anything else could hold them: an expired message, a stalled oplog, and rows whose
every text field carries markup that must be shown, never run.

:class:`Filled` names what went in, so the tests assert the exact rows a page must show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import webob
import webob.dec
import webtest
from sqlalchemy import insert

from chttp_client import Journal, resumable
from chttp_client.testing import set_fault_hook
from chttp_core.db import make_engine
from chttp_core.schema import messages, oplog_steps, oplogs
from chttp_server import CertifiedMiddleware

#: What a hostile client or a broken writer put in text fields. Each script, if it ever
#: ran, would set ``window.__pwned`` and the document's title.
def hostile(n: int) -> str:
    return f"<script>window.__pwned={n};document.title='pwned'</script>"


HOSTILE_ID = hostile(1)
HOSTILE_SCOPE = '<img src=x onerror="window.__pwned=2">'
HOSTILE_BODY = hostile(3).encode()
HOSTILE_HEADER = hostile(4)
HOSTILE_OPLOG = hostile(5)
HOSTILE_FUNCTION = hostile(6)
HOSTILE_URL = "http://receiver.test/" + hostile(8)
HOSTILE_ERROR = hostile(9)

TOKEN = "console-test-token-7f3a-0b9e4c2d5a8f1e6b"  # >= 32 characters (issue 23)
LONG_BODY_ID = "long-body"
LONG_BODY = ("x" * 5000).encode()


@webob.dec.wsgify
def shop(req: webob.Request) -> webob.Response:
    """201 with a small JSON body; ``/refuse`` answers 400 (stored too: §2); ``/long`` 5 kB."""
    if req.path_info == "/refuse":
        return webob.Response(status=400, json_body={"error": "refused"})
    if req.path_info == "/long":
        return webob.Response(status=200, body=LONG_BODY, content_type="text/plain")
    message_id = req.environ["chttp.context"].message_id
    response = webob.Response(status=201, json_body={"ok": True, "id": message_id})
    response.headerlist.extend([("X-Shop", "one"), ("X-Shop", "two")])
    return response


@dataclass
class Filled:
    db_url: str
    receiver_url: str
    #: (scope, id) of messages sent through WebTest, by what they are now.
    completed: list[tuple[str, str]] = field(default_factory=list)
    acknowledged: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    expired: list[tuple[str, str]] = field(default_factory=list)
    #: Oplog ids by state, and the message ids their sends used.
    done_oplogs: list[str] = field(default_factory=list)
    failed_oplogs: list[str] = field(default_factory=list)
    open_oplogs: list[str] = field(default_factory=list)
    stalled_oplogs: list[str] = field(default_factory=list)
    send_ids: dict[str, list[str]] = field(default_factory=dict)

    @property
    def message_count(self) -> int:
        return (len(self.completed) + len(self.acknowledged) + len(self.refused)
                + len(self.expired) + sum(len(ids) for ids in self.send_ids.values()))


class Crash(BaseException):
    """A simulated crash (not an Exception: nothing records it as an outcome)."""


def _transfer(url, amount, *, chttp_context):
    salt = chttp_context.persist(lambda: 7)
    first = chttp_context.post(url + "/shop", json={"amount": amount, "salt": salt})
    if amount < 0:
        raise ValueError(f"negative amount {amount} {HOSTILE_ERROR}")
    second = chttp_context.post(url + "/shop", json={"amount": amount, "leg": 2})
    return [first.status_code, second.status_code]


def fill_receiver(db_url: str, receiver: CertifiedMiddleware, filled: Filled) -> None:
    """Messages through the real middleware, plus the rows a client could not send."""
    client = webtest.TestApp(receiver)
    for scope, message_id in [("alice", "order-1"), ("alice", "order-2"), ("bob", "order-3")]:
        client.post_json("/shop", {"n": message_id}, headers={"X-Message-ID": message_id},
                         extra_environ={"REMOTE_USER": scope}, status=201)
        filled.completed.append((scope, message_id))
    client.post("/long", b"", headers={"X-Message-ID": LONG_BODY_ID},
                extra_environ={"REMOTE_USER": "alice"}, status=200)
    filled.completed.append(("alice", LONG_BODY_ID))
    client.post_json("/refuse", {}, headers={"X-Message-ID": "order-4"},
                     extra_environ={"REMOTE_USER": "bob"}, status=400)
    filled.refused.append(("bob", "order-4"))
    client.delete("/chttp/messages/order-2", extra_environ={"REMOTE_USER": "alice"}, status=204)
    filled.completed.remove(("alice", "order-2"))
    filled.acknowledged.append(("alice", "order-2"))

    now = datetime.now(timezone.utc)
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(insert(messages), [
                {"scope": "alice", "message_id": "old-1", "fingerprint": "0" * 64,
                 "state": "completed", "status": 201, "headers": "[]", "body": b"{}",
                 "received_at": now - timedelta(days=16), "expires_at": now - timedelta(days=1)},
                {"scope": HOSTILE_SCOPE, "message_id": HOSTILE_ID, "fingerprint": "f" * 64,
                 "state": "completed", "status": 200,
                 "headers": json.dumps([["Content-Type", "text/html"], ["X-Evil", HOSTILE_HEADER]]),
                 "body": HOSTILE_BODY, "received_at": now, "expires_at": now + timedelta(days=15)},
            ])
    finally:
        engine.dispose()
    filled.expired.append(("alice", "old-1"))
    filled.completed.append((HOSTILE_SCOPE, HOSTILE_ID))


def fill_journal(db_url: str, filled: Filled) -> None:
    """Oplogs written by a real journal: two done, one failed, one cut off by a crash."""
    with Journal(db_url, acknowledge=False, lease=timedelta(0)) as journal:
        transfer = resumable(journal, name="console_tests.transfer")(_transfer)
        for amount in (5, 7):
            transfer(filled.receiver_url, amount)
        try:
            transfer(filled.receiver_url, -1)
        except ValueError:
            pass

        def crash(event):
            if event.point == "send-recorded" and event.step == 3:
                raise Crash()

        set_fault_hook(journal, crash)
        try:
            transfer(filled.receiver_url, 9)
        except Crash:
            pass
        set_fault_hook(journal, None)
        for info in journal.list():
            target = {"done": filled.done_oplogs, "failed": filled.failed_oplogs,
                      "open": filled.open_oplogs}[info.state]
            target.append(info.id)
            steps = journal.get(info.id).steps
            # The crashed run's last send was recorded, never sent: no message for it.
            filled.send_ids[info.id] = [s.message_id for s in steps
                                        if s.message_id and s.response is not None]
    now = datetime.now(timezone.utc)
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(insert(oplogs).values(
                id=HOSTILE_OPLOG, function=HOSTILE_FUNCTION, version=1,
                arguments=json.dumps({"args": [hostile(7)], "kwargs": {}}), state="open",
                lease_owner="elsewhere/1/x", lease_expires_at=now - timedelta(minutes=5),
                created_at=now - timedelta(hours=2), updated_at=now - timedelta(hours=2)))
            connection.execute(insert(oplog_steps).values(
                oplog_id=HOSTILE_OPLOG, number=1, kind="send", name="POST " + HOSTILE_URL,
                state="done", message_id="hostile-send",
                request=json.dumps({"method": "POST", "url": HOSTILE_URL, "headers": []}),
                outcome=json.dumps({"error": {"type": "builtins:RuntimeError", "args": [],
                                              "message": HOSTILE_ERROR}})))
    finally:
        engine.dispose()
    filled.stalled_oplogs.append(HOSTILE_OPLOG)
