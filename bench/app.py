"""The benchmarked application, in its three dresses: bare, certified and peer.

One WSGI function serves all three, so the only difference between the rows of the
table is the middleware. ``POST /transfer`` is the realistic handler (lock an account
row, update it, insert a ledger entry, read both back). ``POST /items`` inserts one row into ``bench_items``: in its own
transaction when bare (or behind the peer, which keeps its records in transactions of its
own), and through the certified request's shared connection when
``environ["chttp.context"]`` is present. ``GET /pid`` answers the worker's pid, so the
launcher can tell when every worker has booted.

Gunicorn loads ``bench.app:application``; the mode and the database come from the
environment (``BENCH_MODE`` = ``bare`` | ``certified`` | ``certified-default`` | ``peer``,
``BENCH_DB_URL``).
"""

from __future__ import annotations

import json
import os
import random
import threading
from typing import Any, Callable, Iterable

from sqlalchemy import Engine, text

from chttp_core.db import make_engine
from chttp_server.context import ENVIRON_KEY

__all__ = ["make_app", "application", "MODES"]

MODES = ("bare", "certified", "certified-default", "peer")

_INSERT = text("INSERT INTO bench_items (message_id, payload) VALUES (:message_id, :payload)")

#: The realistic handler (``POST /transfer``): the statements of a typical API write.
_LOCK_ACCOUNT = text("SELECT balance FROM bench_accounts WHERE id = :id FOR UPDATE")
_UPDATE_ACCOUNT = text("UPDATE bench_accounts SET balance = balance + :amount WHERE id = :id")
_LOG_ENTRY = text("INSERT INTO bench_ledger (account_id, amount, message_id) "
                  "VALUES (:id, :amount, :message_id) RETURNING id")
_READ_BACK = text("SELECT a.balance, l.created_at FROM bench_accounts a "
                  "JOIN bench_ledger l ON l.account_id = a.id WHERE a.id = :id AND l.id = :entry")
#: Accounts the transfers spread over (bench/cluster.py creates them).
ACCOUNTS = 1000
_CREATED = ("201 Created", [("Content-Type", "application/json"), ("Content-Length", "12")])
_CREATED_BODY = b'{"ok": true}'


def items_app(engine: Engine) -> Callable[..., Iterable[bytes]]:
    """The bare application: ``POST /items`` inserts one row, ``GET /pid`` says who answered."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        if path == "/pid":
            body = str(os.getpid()).encode()
            start_response("200 OK", [("Content-Type", "text/plain"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path == "/transfer" and method == "POST":
            return transfer(environ, start_response)
        if path != "/items" or method != "POST":
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        payload = environ["wsgi.input"].read(length).decode("utf-8") if length else "{}"
        context = environ.get(ENVIRON_KEY)
        if context is not None:
            # Certified: the insert joins the transaction that stores the response.
            context.connection.execute(_INSERT, {"message_id": context.message_id,
                                                 "payload": payload})
        else:
            with engine.begin() as connection:
                connection.execute(_INSERT, {"message_id": None, "payload": payload})
        start_response(*_CREATED)
        return [_CREATED_BODY]

    def transfer(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Lock an account, update it, log the entry, read both back: five statements."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        amount = int(json.loads(environ["wsgi.input"].read(length) or b"{}").get("amount", 1))
        account = random.randrange(1, ACCOUNTS + 1)
        context = environ.get(ENVIRON_KEY)
        if context is not None:
            result = _transfer_in(context.connection, account, amount, context.message_id)
        else:
            with engine.begin() as connection:
                result = _transfer_in(connection, account, amount, None)
        body = json.dumps(result).encode()
        start_response("201 Created", [("Content-Type", "application/json"),
                                       ("Content-Length", str(len(body)))])
        return [body]

    return app


def _transfer_in(connection: Any, account: int, amount: int,
                 message_id: str | None) -> dict[str, Any]:
    connection.execute(_LOCK_ACCOUNT, {"id": account}).one()
    connection.execute(_UPDATE_ACCOUNT, {"id": account, "amount": amount})
    entry = connection.execute(_LOG_ENTRY, {"id": account, "amount": amount,
                                            "message_id": message_id}).scalar_one()
    balance, created = connection.execute(_READ_BACK, {"id": account, "entry": entry}).one()
    return {"account": account, "balance": balance, "entry": entry,
            "at": created.isoformat()}


def make_app(mode: str, db_url: str, *, pool_size: int = 8) -> Callable[..., Iterable[bytes]]:
    """The application for ``mode``, its engines sized for one gunicorn worker."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    # The bare application at its cheapest: no pre-ping round trip (SQLAlchemy's own
    # default), so certified rows are compared with the fastest bare request there is.
    engine = make_engine(db_url, pool_size=pool_size, max_overflow=pool_size,
                         pool_pre_ping=False)
    app = items_app(engine)
    if mode in ("certified", "certified-default"):
        from chttp_server import CertifiedMiddleware

        # As the middleware makes its own from a URL: no pre-ping (the claim retries).
        store_engine = make_engine(db_url, pool_size=pool_size, max_overflow=pool_size,
                                   pool_pre_ping=False)
        # "certified": direct connections to PostgreSQL, so the store may prepare its
        # statements; "certified-default": the middleware's defaults (what works behind
        # PgBouncer too), measured beside it.
        return CertifiedMiddleware(app, engine=store_engine,
                                   prepared_statements=mode == "certified")
    if mode == "peer":
        # idemkit's documented WSGI set-up: WSGIIdempotencyMiddleware with
        # PostgresBackend.from_url (schema made beforehand by `idemkit init-pg`).
        # One anonymous tenant, as chttp's default scope: scope_mode="single_tenant".
        from idemkit import HttpConfig, WSGIIdempotencyMiddleware
        from idemkit.backends.postgres import PostgresBackend

        backend = PostgresBackend.from_url(db_url, max_size=max(pool_size, 4))
        return WSGIIdempotencyMiddleware(app, backend=backend,
                                         config=HttpConfig(scope_mode="single_tenant"))
    return app


def _from_environment() -> Callable[..., Iterable[bytes]]:
    return make_app(os.environ.get("BENCH_MODE", "bare"), os.environ["BENCH_DB_URL"],
                    pool_size=int(os.environ.get("BENCH_POOL_SIZE", "8")))


class BuiltOnFirstCall:
    """A gunicorn entry point whose app is built on its first call, after the worker
    forks (connections must not cross the fork); the framework apps use it too."""

    def __init__(self, build: Callable[[], Callable[..., Iterable[bytes]]]) -> None:
        self._build = build
        self._app: Callable[..., Iterable[bytes]] | None = None
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._build()
        return self._app(environ, start_response)


#: Gunicorn's entry point: ``bench.app:application``.
application = BuiltOnFirstCall(_from_environment)
