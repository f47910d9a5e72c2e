"""Run one escrow-example service as its own process (the demo starts these).

::

    python -m chttp_examples.escrow.serve ledger --db URL --port P [--access-log FILE]
    python -m chttp_examples.escrow.serve escrow --db URL --port P --ledger A=URL --ledger B=URL
    python -m chttp_examples.escrow.serve ledger --asgi …    (any of them: ASGI on uvicorn)

Each service serves on ``127.0.0.1`` with waitress, or with ``--asgi`` as its ASGI twin
on uvicorn (:mod:`~chttp_examples.escrow.serve_asgi`). ``--access-log`` appends one line
per certified request — method, path, message id, status, and whether the answer was a
replay (:func:`access_line`, the same for both) — flushed at once, so the demo can count
deliveries and replays even of a process it killed a moment later.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Sequence, TextIO

__all__ = ["AccessLog", "access_line", "log_send_attempts", "build_parser", "main"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class AccessLog:
    """WSGI wrapper, outside the middleware: sees the id and ``Idempotent-Replayed``."""

    def __init__(self, app: WSGIApp, stream: TextIO) -> None:
        self.app = app
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        message_id = environ.get("HTTP_X_MESSAGE_ID") or environ.get("HTTP_IDEMPOTENCY_KEY")
        if not message_id:
            return self.app(environ, start_response)
        seen: dict[str, Any] = {}
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")  # traversal pops it

        def recording_start_response(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            seen["status"] = status.split(" ", 1)[0]
            seen["replayed"] = any(name.lower() == "idempotent-replayed" for name, _ in headers)
            return start_response(status, headers, *exc)

        result = self.app(environ, recording_start_response)
        line = access_line(method, path, message_id, seen.get("status"), bool(seen.get("replayed")))
        with self._lock:
            self.stream.write(line)
            self.stream.flush()
        return result


def access_line(method: Any, path: Any, message_id: str, status: Any, replayed: bool) -> str:
    """One access-log line: six fields, as ``chttp_examples.escrow.demo.Deliveries`` reads them."""
    return "{:.3f} {} {} {} {} {}\n".format(
        time.time(), method, path, message_id.strip('"'),
        status if status is not None else "-", "replayed" if replayed else "ran",
    )


def log_send_attempts(journal: Any, path: str) -> None:
    """Append the message id of every attempt of a certified send to ``path``.

    Observes the journal's runs (:mod:`chttp_client.observers`); a second line with the
    same id is a retry — after a timeout, a 5xx, or a crash and ``resume_all()`` (a
    resumed send keeps its id).
    """
    from chttp_client import observers

    stream = open(path, "a", encoding="utf-8")
    lock = threading.Lock()

    class AttemptLog(observers.StepObserver):
        def on_event(self, event: observers.StepEvent) -> None:
            if event.point == "send-attempt":
                with lock:
                    stream.write(f"{event.message_id}\n")
                    stream.flush()

    observers.subscribe(journal.store, AttemptLog())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.escrow.serve")
    parser.add_argument("service", choices=("ledger", "escrow"))
    parser.add_argument("--db", required=True, metavar="URL")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ledger", action="append", default=[], metavar="NAME=URL",
                        help="a ledger the escrow may use (escrow only; repeat)")
    parser.add_argument("--access-log", metavar="FILE")
    parser.add_argument("--attempt-log", metavar="FILE",
                        help="escrow only: one line per attempt of each certified send")
    parser.add_argument("--threads", type=int, default=8, help="waitress's threads (WSGI only)")
    parser.add_argument("--asgi", action="store_true",
                        help="serve the ASGI twin on uvicorn (Starlette, async SQLAlchemy, and "
                             "for the escrow an async def driver)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s {args.service}[{os.getpid()}] %(name)s %(levelname)s %(message)s")
    if args.asgi:
        from chttp_examples.escrow.serve_asgi import serve

        return serve(args)
    import waitress

    driver = None
    if args.service == "ledger":
        from chttp_examples.escrow import ledger

        app: WSGIApp = ledger.make_app(args.db)
    else:
        from chttp_examples.escrow import escrow
        from chttp_examples.escrow.client import demo_retry_policy

        ledgers = dict(item.split("=", 1) for item in args.ledger)
        app, driver = escrow.make_app(args.db, ledgers, escrow_url=f"http://127.0.0.1:{args.port}",
                                      retry_policy=demo_retry_policy())
    if args.access_log:
        app = AccessLog(app, open(args.access_log, "a", encoding="utf-8"))
    if driver is not None:
        if args.attempt_log:
            log_send_attempts(driver.journal, args.attempt_log)
        driver.start()
    waitress.serve(app, host="127.0.0.1", port=args.port, threads=args.threads,
                   ident=f"chttp-{args.service}", _quiet=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
