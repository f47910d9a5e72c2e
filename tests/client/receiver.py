"""A real certified receiver for the sender tests, and helpers to count what it ran.

Every handler records its run in ``receiver_runs`` through the certified transaction,
so ``count_runs`` counts handler executions that really committed: exactly-once means
one row per message id.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import webob
import webob.exc
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from chttp_server import CertifiedMiddleware, Resource

receiver_metadata = MetaData()
receiver_runs = Table(
    "receiver_runs",
    receiver_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(128)),
    Column("path", String(200)),
    Column("body", String(2000)),
)


def _record(req: Any) -> None:
    req.chttp.connection.execute(insert(receiver_runs).values(
        message_id=req.chttp.message_id, path=req.path, body=req.text[:2000]))


def count_runs(engine: Any, message_id: str | None = None) -> int:
    query = select(func.count()).select_from(receiver_runs)
    if message_id is not None:
        query = query.where(receiver_runs.c.message_id == message_id)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def runs(engine: Any) -> list[tuple[str, str, str]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(  # type: ignore[misc]
            select(receiver_runs.c.message_id, receiver_runs.c.path, receiver_runs.c.body)
            .order_by(receiver_runs.c.id))]


class Escrow(Resource):
    """The seed's escrow: answers a fresh random number each time its handler runs."""

    def handle_post(self, req):
        _record(req)
        return webob.Response(status=201, json_body={
            "random number": random.randrange(10**6),
            "amount": (req.json_body or {}).get("amount") if req.body else None,
            "message_id": req.chttp.message_id if req.chttp else None,
        })

    handle_put = handle_patch = handle_delete = handle_get = handle_post


class Flaky(Resource):
    """The resource behind :class:`Front`'s failures: 201 once an attempt gets through."""

    def handle_post(self, req):
        _record(req)
        return webob.Response(status=201, json_body={"ok": True})


class Front:
    """WSGI in front of the middleware: fails the first ``failures`` attempts per id on /flaky.

    Retryable answers come from *in front of* a certified receiver (a proxy, a rate
    limiter) or from the middleware itself: a handler's own 4xx would be stored and
    replayed (docs/protocol.rst §2), so 409/429 are produced here, like a proxy would.
    """

    def __init__(self, app: CertifiedMiddleware) -> None:
        self.app = app
        self.engine = app.engine
        self.status = 503
        self.failures = 0
        self.retry_after: str | None = None
        self.seen: dict[str, int] = {}
        #: DELETEs (acknowledgements) received per path, whatever they answered.
        self.deletes: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "DELETE":
            with self.lock:
                path = environ.get("PATH_INFO", "")
                self.deletes[path] = self.deletes.get(path, 0) + 1
        if environ.get("PATH_INFO") == "/flaky":
            key = environ.get("HTTP_X_MESSAGE_ID", "")
            with self.lock:
                self.seen[key] = self.seen.get(key, 0) + 1
                attempt = self.seen[key]
            if attempt <= self.failures:
                headers = [("Retry-After", self.retry_after)] if self.retry_after else []
                if self.status == 409:
                    body = b'{"type": "message-in-progress", "title": "busy", "status": 409}'
                    headers.append(("Content-Type", "application/problem+json"))
                else:
                    body = b'{"error": "try later"}'
                    headers.append(("Content-Type", "application/json"))
                start_response(f"{self.status} Failing", headers)
                return [body]
        return self.app(environ, start_response)


class Status(Resource):
    """Answers the status code named by the last path segment (a definitive 4xx is stored)."""

    def child(self, segment: str) -> Resource | None:
        status = int(segment)

        class Fixed(Resource):
            def handle_post(self, req):
                if status < 500:
                    _record(req)
                return webob.Response(status=status, json_body={"status": status})

        return Fixed()


class Root(Resource):
    def __init__(self) -> None:
        self.children = {"escrow": Escrow(), "flaky": Flaky(), "status": Status()}


def make_receiver(db_url: str, **options: Any) -> Front:
    """A CertifiedMiddleware app around :class:`Root` on its own database, behind :class:`Front`."""
    app = CertifiedMiddleware(Root(), db_url=db_url, upgrade_schema=True, **options)
    receiver_metadata.create_all(app.engine)
    return Front(app)
