"""``serve … --asgi``: one escrow-example service as its ASGI twin, on uvicorn.

Called by :func:`chttp_examples.escrow.serve.main` with its parsed arguments. The process
is the uvicorn server itself (one process, no workers, no reloader), so the demo's chaos
loop SIGKILLs uvicorn and nothing else. uvicorn runs the application's lifespan — which
for the escrow resumes the oplogs a kill cut off and starts the driver — before it binds
the port, so "the port accepts" still means "ready" to the demo.

The access log is :class:`AsgiAccessLog`, outside the certified middleware like the WSGI
one, writing the same lines (:func:`~chttp_examples.escrow.serve.access_line`); uvicorn's
own access log is off (it sees neither the message id nor ``Idempotent-Replayed``).
"""

from __future__ import annotations

import argparse
from typing import Any, Awaitable, Callable, MutableMapping, TextIO

from chttp_examples.escrow.serve import access_line, log_send_attempts

__all__ = ["AsgiAccessLog", "serve"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AsgiAccessLog:
    """ASGI wrapper, outside the middleware: sees the id and ``Idempotent-Replayed``.

    One short line, flushed, per certified request answered — a local file write, the
    same as the WSGI log's; the demo reads these files after a kill.
    """

    def __init__(self, app: ASGIApp, stream: TextIO) -> None:
        self.app = app
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw_id = headers.get(b"x-message-id") or headers.get(b"idempotency-key")
        if not raw_id:
            await self.app(scope, receive, send)
            return
        seen: dict[str, Any] = {}

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["replayed"] = any(name.lower() == b"idempotent-replayed"
                                       for name, _ in message.get("headers") or [])
            await send(message)

        method, path = scope.get("method"), scope.get("path")
        await self.app(scope, receive, recording_send)
        self.stream.write(access_line(method, path, raw_id.decode("latin-1"),
                                      seen.get("status"), bool(seen.get("replayed"))))
        self.stream.flush()


def serve(args: argparse.Namespace) -> int:
    """Build the service's ASGI application and serve it until SIGTERM (or SIGKILL)."""
    import uvicorn

    driver = None
    if args.service == "ledger":
        from chttp_examples.escrow import ledger_asgi

        app: ASGIApp = ledger_asgi.make_app(args.db)
    else:
        from chttp_examples.escrow import escrow_asgi
        from chttp_examples.escrow.client import demo_retry_policy

        ledgers = dict(item.split("=", 1) for item in args.ledger)
        app, driver = escrow_asgi.make_app(args.db, ledgers,
                                           escrow_url=f"http://127.0.0.1:{args.port}",
                                           retry_policy=demo_retry_policy())
    if args.access_log:
        app = AsgiAccessLog(app, open(args.access_log, "a", encoding="utf-8"))
    if driver is not None and args.attempt_log:
        log_send_attempts(driver.journal, args.attempt_log)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, lifespan="on", access_log=False,
        log_config=None, log_level="warning", server_header=False,
        # At the end of the demo (SIGTERM): stop waiting for open connections soon; the
        # lifespan then cancels the drives, whose oplogs stay resumable.
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run()
    return 0
