"""The benchmarked application, in its three dresses: bare, certified and peer.

One WSGI function serves all three, so the only difference between the rows of the
table is the middleware. ``POST /items`` inserts one row into ``bench_items``: in its own
transaction when bare (or behind the peer, which keeps its records in transactions of its
own), and through the certified request's shared connection when
``environ["chttp.context"]`` is present. ``GET /pid`` answers the worker's pid, so the
launcher can tell when every worker has booted.

Gunicorn loads ``bench.app:application``; the mode and the database come from the
environment (``BENCH_MODE`` = ``bare`` | ``certified`` | ``peer``, ``BENCH_DB_URL``).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterable

from sqlalchemy import Engine, text

from chttp_core.db import make_engine
from chttp_server.context import ENVIRON_KEY

__all__ = ["make_app", "application", "MODES"]

MODES = ("bare", "certified", "peer")

_INSERT = text("INSERT INTO bench_items (message_id, payload) VALUES (:message_id, :payload)")
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

    return app


def make_app(mode: str, db_url: str, *, pool_size: int = 8) -> Callable[..., Iterable[bytes]]:
    """The application for ``mode``, its engines sized for one gunicorn worker."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    engine = make_engine(db_url, pool_size=pool_size, max_overflow=pool_size)
    app = items_app(engine)
    if mode == "certified":
        from chttp_server import CertifiedMiddleware

        store_engine = make_engine(db_url, pool_size=pool_size, max_overflow=pool_size)
        return CertifiedMiddleware(app, engine=store_engine)
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


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Gunicorn's entry point; builds the app on first call (after the worker forks)."""
    global _app
    if _app is None:
        with _app_lock:
            if _app is None:
                _app = _from_environment()
    return _app(environ, start_response)


_app: Callable[..., Iterable[bytes]] | None = None
_app_lock = threading.Lock()
