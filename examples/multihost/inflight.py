"""The requests a receiver is still working on: how stuck workers are counted after a fault.

:class:`InFlight` wraps a receiver's WSGI application and keeps the start time of each
request inside it; ``GET /_inflight`` (answered by the wrapper itself, never certified)
returns how many there are and how long the oldest has been running. After a fault
and the load's end every client has stopped waiting, so a request still inside is a
worker thread that never answered: a *stuck worker* (:meth:`.topology.Topology.stuck_workers`).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any, Callable, Iterable

__all__ = ["InFlight", "PATH"]

PATH = "/_inflight"


class InFlight:
    """WSGI wrapper counting the requests inside ``app`` (the module docstring)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.started: dict[int, float] = {}
        self.tokens = itertools.count()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == PATH:
            now = time.monotonic()
            with self.lock:
                ages = [now - started for started in self.started.values()]
            body = json.dumps({"in_flight": len(ages), "oldest": max(ages, default=0.0)}).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        token = next(self.tokens)
        with self.lock:
            self.started[token] = time.monotonic()
        try:
            result = self.app(environ, start_response)
            try:
                # The example's answers are small: read whole, so the request counts as
                # answered only once its body was produced.
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            with self.lock:
                del self.started[token]
