"""The receivers' stuck-worker count (:mod:`chttp_examples.multihost.inflight`) sees a request
still inside the application, and forgets it once answered — or the figure the Patroni
fault reports print could only ever say 0."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterable
from wsgiref.util import setup_testing_defaults

import pytest

from chttp_examples.multihost.inflight import PATH, InFlight


def _get(app: InFlight, path: str) -> tuple[str, bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    return statuses[0], body


def test_a_request_inside_the_app_is_counted_until_it_is_answered():
    entered, release = threading.Event(), threading.Event()

    def slow(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        entered.set()
        release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    app = InFlight(slow)
    assert json.loads(_get(app, PATH)[1])["in_flight"] == 0
    answers: list[tuple[str, bytes]] = []
    worker = threading.Thread(target=lambda: answers.append(_get(app, "/effects")))
    worker.start()
    assert entered.wait(10)
    during = json.loads(_get(app, PATH)[1])
    release.set()
    worker.join(10)
    assert during["in_flight"] == 1 and during["oldest"] >= 0
    assert answers == [("200 OK", b"done")]
    assert json.loads(_get(app, PATH)[1]) == {"in_flight": 0, "oldest": 0.0}


def test_a_request_whose_app_raised_is_not_left_counted():
    def broken(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise RuntimeError("boom")

    app = InFlight(broken)
    with pytest.raises(RuntimeError):
        _get(app, "/effects")
    assert json.loads(_get(app, PATH)[1])["in_flight"] == 0
