"""A small certified service used by the receiver tests.

Each path exercises one row of docs/protocol.rst §2's outcome table; every handler records
its run in ``host_writes`` through the shared transaction, so a test can count how often
a handler's effect really committed.
"""

from __future__ import annotations

import threading
import time

import webob
import webob.exc
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from chttp_server import Resource

host_metadata = MetaData()
host_writes = Table(
    "host_writes",
    host_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(128)),
    Column("note", String(200)),
)

BINARY_BODY = bytes(range(256)) * 4


def record(req, note: str) -> None:
    req.chttp.connection.execute(
        insert(host_writes).values(message_id=req.chttp.message_id, note=note)
    )


def count_writes(engine, note: str | None = None) -> int:
    query = select(func.count()).select_from(host_writes)
    if note is not None:
        query = query.where(host_writes.c.note == note)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


class Echo(Resource):
    """201 with a JSON body naming the request; multi-valued headers kept."""

    def handle_post(self, req):
        record(req, "echo")
        response = webob.Response(
            status=201,
            json_body={"message_id": req.chttp.message_id, "scope": req.chttp.scope,
                       "body": req.text},
        )
        response.headerlist.append(("Set-Cookie", "a=1; Path=/"))
        response.headerlist.append(("Set-Cookie", "b=2; Path=/"))
        response.headerlist.append(("X-Multi", "one"))
        response.headerlist.append(("X-Multi", "two"))
        return response

    handle_put = handle_post


class Binary(Resource):
    def handle_post(self, req):
        record(req, "binary")
        return BINARY_BODY


class Refuse(Resource):
    """A 4xx is a definitive answer: stored, with its writes."""

    def handle_post(self, req):
        record(req, "refuse")
        raise webob.exc.HTTPConflict(json_body={"error": "insufficient funds"})


class Fail(Resource):
    """A 5xx rolls back: the write never commits and the key stays free."""

    def handle_post(self, req):
        record(req, "fail")
        return webob.Response(status=503, body=b"try later")


class Throttle(Resource):
    """429 says "not now": like a 5xx it must not be stored, or every retry would get it."""

    def handle_post(self, req):
        record(req, "throttle")
        return webob.Response(status=429, headers=[("Retry-After", "1")], body=b"slow down")


class Boom(Resource):
    def handle_post(self, req):
        record(req, "boom")
        raise RuntimeError("handler exploded")


class Large(Resource):
    def handle_post(self, req):
        record(req, "large")
        return b"x" * int(req.params.get("size", "2048"))


class Slow(Resource):
    """Holds its transaction open so that concurrent duplicates meet an in-flight claim."""

    delay = 0.3
    gate: threading.Event | None = None

    def handle_post(self, req):
        record(req, "slow")
        if Slow.gate is not None:
            Slow.gate.wait(10)
        time.sleep(self.delay)
        return {"slow": req.chttp.message_id}


class Orm(Resource):
    """Writes through the lazily made ORM session instead of the connection."""

    def handle_post(self, req):
        from sqlalchemy import insert as sa_insert

        session = req.chttp.session
        session.execute(sa_insert(host_writes).values(message_id=req.chttp.message_id, note="orm"))
        session.commit()  # joins the request's transaction: must not commit it early
        if req.params.get("then") == "fail":
            return webob.Response(status=500)
        return {"orm": True}


class LockTimeout(Resource):
    """Reports the lock_timeout the handler's statements run with (PostgreSQL)."""

    def handle_post(self, req):
        from sqlalchemy import text

        return req.chttp.connection.execute(text("SHOW lock_timeout")).scalar_one()


class Root(Resource):
    children = {
        "echo": Echo(),
        "binary": Binary(),
        "refuse": Refuse(),
        "fail": Fail(),
        "throttle": Throttle(),
        "boom": Boom(),
        "large": Large(),
        "slow": Slow(),
        "orm": Orm(),
        "lock-timeout": LockTimeout(),
    }

    def handle_get(self, req):
        return "root"
