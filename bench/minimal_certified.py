"""The least Python a certified request can run with chttp's SQL: a bound, not a product.

Issue 20 asks to halve the CPU the receiver adds to a certified request in process
(``python -m bench.profile``). What is that CPU made of? Some of it is the two extra
statements every design with a message row pays (the driver, the kernel's socket work);
the rest is the receiver's own Python. This module is the first part alone: a
hand-written certified request around the same application (bench/app.py's ``items``)
that sends exactly what ``CertifiedMiddleware`` sends on PostgreSQL + psycopg2 with
``prepared_statements=True`` — ``BEGIN`` with the prepared claim, the application's
insert on the same connection, the prepared stored response with ``COMMIT`` — and the
same answer headers, with as little Python as that takes.

What it leaves out is what the middleware is for beyond the happy path: replays (it
refuses any id it did not claim), refusals (400, 412, 413, 422, 410), the 503 of a store
that went away and the claim's retry on a fresh connection, the guard against a handler
that ends the transaction itself, telemetry, scopes, limits, the message resource. Its
figures therefore bound from below what any receiver with this SQL can cost; they say
nothing about what a receiver without those protections would be worth.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from bench.app import items_app
from chttp_core.db import make_engine
from chttp_core.schema import STATE_COMPLETED
from chttp_core.wire import fingerprint, format_http_date
from chttp_server import store_dbapi
from chttp_server.context import ENVIRON_KEY
from chttp_server.messages import headers_json

__all__ = ["make_app"]

RETENTION = timedelta(days=15)
_PREPARED_KEY = "bench_minimal_prepared"
_CLAIM = "BEGIN; " + store_dbapi.CLAIM_EXECUTE
_COMPLETE = store_dbapi.COMPLETE_EXECUTE + "; COMMIT"


class _Context:
    """The two attributes bench/app.py reads of ``environ["chttp.context"]``."""

    __slots__ = ("connection", "message_id")

    def __init__(self, connection: Any, message_id: str) -> None:
        self.connection = connection
        self.message_id = message_id


def make_app(db_url: str, *, pool_size: int = 8) -> Callable[..., Iterable[bytes]]:
    """The bound: bench/app.py's application behind the minimal certified request."""
    app = items_app(make_engine(db_url, pool_size=pool_size, max_overflow=pool_size,
                                pool_pre_ping=False))
    store_engine = make_engine(db_url, pool_size=pool_size, max_overflow=pool_size,
                               pool_pre_ping=False)

    def certified(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        message_id = environ["HTTP_X_MESSAGE_ID"]
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        environ["wsgi.input"] = io.BytesIO(body)
        digest = fingerprint(environ["REQUEST_METHOD"], environ["PATH_INFO"],
                             environ["QUERY_STRING"], body)
        now = datetime.now(timezone.utc)
        connection = store_engine.connect()
        try:
            connection.begin()
            pooled = connection.connection
            raw = pooled.dbapi_connection
            assert raw is not None
            raw.autocommit = True  # BEGIN and COMMIT travel with the statements
            cursor = raw.cursor()
            if _PREPARED_KEY not in pooled.info:
                cursor.execute(f"{store_dbapi.CLAIM_PREPARE}; {store_dbapi.COMPLETE_PREPARE}")
                pooled.info[_PREPARED_KEY] = True
            cursor.execute(_CLAIM, {
                "scope": "", "message_id": message_id, "fingerprint": digest,
                "state": STATE_COMPLETED, "received_at": now, "expires_at": now + RETENTION,
                "lock_timeout": "5000ms"})
            if cursor.fetchone()[0] != 1:
                cursor.execute("ROLLBACK")  # in driver autocommit: psycopg2's rollback() is a no-op
                raw.autocommit = False
                raise RuntimeError(f"{message_id!r} was not claimed: the bound answers no replay")
            environ[ENVIRON_KEY] = _Context(connection, message_id)
            answered: list[tuple[str, list[tuple[str, str]]]] = []
            content = b"".join(app(environ, lambda status, headers, exc_info=None:
                                   answered.append((status, headers))))
            status, headers = answered[0]
            cursor.execute(_COMPLETE, {
                "status": int(status[:3]), "headers": headers_json(headers), "body": content,
                "scope": "", "message_id": message_id})
            cursor.close()
            raw.autocommit = False
            connection.commit()
        finally:
            connection.close()
        start_response(status, headers + [
            ("X-Message-URL", f"/chttp/messages/{message_id}"),
            ("X-Message-Expires", format_http_date(now + RETENTION))])
        return [content]

    return certified
