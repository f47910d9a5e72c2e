"""An ASGI receiver host: :mod:`.app`'s ``POST /effects`` on asyncpg, under uvicorn.

::

    python -m chttp_examples.multihost.asgi_receiver --db URL --host ADDRESS --port P

The twin of :mod:`.receiver` for the ASGI front end
(:class:`chttp_server.asgi.CertifiedMiddleware` over an ``AsyncEngine``): the same
``mh_effects`` row and nonce per handler run, written through the message's own
``AsyncConnection``, the same ``linger`` (``pg_sleep`` inside the transaction), and the
same ``GET /_inflight`` count of requests still inside (:mod:`.inflight`).

The store URL is asyncpg's multi-host form, which SQLAlchemy's asyncpg dialect turns
into asyncpg's lists of hosts and ports, and asyncpg honours
``target_session_attrs=read-write`` itself (asyncpg ≥ 0.28)::

    postgresql+asyncpg://app@/db?host=pg1:5432&host=pg2:5432&host=pg3:5432&target_session_attrs=read-write

libpq's ``connect_timeout`` and ``tcp_user_timeout`` are not asyncpg options (they
would be passed on to ``asyncpg.connect`` and refused): the connect timeout is
``make_async_engine``'s (5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import sys
import time
import uuid
from typing import Any, Awaitable, Callable, Sequence

from chttp_examples.multihost.app import HOST_ENV, INSERT_EFFECT, linger_seconds
from chttp_examples.multihost.inflight import PATH
from chttp_server.asgi.incoming import Receive, Scope, Send

__all__ = ["main", "effects_app", "InFlightASGI"]


async def _answer(send: Send, status: int, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def effects_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /effects``: :class:`.app.Effects` for the ASGI front end."""
    from sqlalchemy import text

    from chttp_server.asgi import current_message

    if scope["type"] != "http":
        return
    if scope["path"] != "/effects" or scope["method"] != "POST":
        await _answer(send, 404, {"error": "not found"})
        return
    message = current_message()
    if message is None:
        await _answer(send, 400, {"error": "POST /effects must be certified (send X-Message-ID)"})
        return
    chunks = []
    while True:
        event = await receive()
        chunks.append(event.get("body", b""))
        if not event.get("more_body"):
            break
    payload = b"".join(chunks).decode()
    nonce = uuid.uuid4().hex
    host = os.environ.get(HOST_ENV) or socket.gethostname()
    await message.connection.execute(INSERT_EFFECT, {
        "scope": message.scope, "message_id": message.message_id, "nonce": nonce,
        "host": host, "payload": payload})
    linger = linger_seconds(payload)
    if linger:
        await message.connection.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": linger})
    await _answer(send, 200, {"message_id": message.message_id, "nonce": nonce, "host": host})


class InFlightASGI:
    """:class:`.inflight.InFlight` for ASGI: ``GET /_inflight`` counts requests inside."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.started: dict[int, float] = {}
        self.tokens = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH:
            now = time.monotonic()
            ages = [now - started for started in self.started.values()]
            await _answer(send, 200, {"in_flight": len(ages), "oldest": max(ages, default=0.0)})
            return
        token = next(self.tokens)
        self.started[token] = time.monotonic()   # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            del self.started[token]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.multihost.asgi_receiver")
    parser.add_argument("--db", required=True, help="message store URL (postgresql+asyncpg://…)")
    parser.add_argument("--host", required=True, help="listen address")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=8, help="the engine's pool size")
    parser.add_argument("--claim-timeout", type=float, default=2.0)
    args = parser.parse_args(argv)

    import logging

    import uvicorn

    from chttp_server.asgi import CertifiedMiddleware, make_async_engine

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    engine = make_async_engine(args.db, pool_size=args.threads, max_overflow=0, pool_timeout=5)
    app = InFlightASGI(CertifiedMiddleware(effects_app, engine=engine, claim_timeout=args.claim_timeout))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            lifespan="off", timeout_keep_alive=30)
    server = uvicorn.Server(config)

    async def serve() -> None:
        running = asyncio.ensure_future(server.serve())
        while not server.started and not running.done():
            await asyncio.sleep(0.05)
        if server.started:   # the topology waits for this line: listening now
            print(f"serving on http://{args.host}:{args.port}", flush=True)
        await running
    asyncio.run(serve())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
