"""A header that looks meant as the id is warned about once (issue 25 item 7).

``Message-ID: …`` instead of ``X-Message-ID`` silently switched exactly-once off: the
request passed through untouched and its retry ran the handler again. The rule lives
in :mod:`chttp_server.decisions`, so the WSGI middleware, Flask, Django (same environ
reader) and the ASGI front end all warn the same way; the request itself is still
passed through — a guess is never taken as an id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
import webtest

from chttp_server import CertifiedMiddleware, decisions
from chttp_server.decisions import near_miss_header


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decisions, "_warned", set())


@pytest.mark.parametrize("names,found", [
    pytest.param(["Message-ID"], "Message-ID", id="message-id"),
    pytest.param(["Content-Type", "X-Idempotency-Key"], "X-Idempotency-Key", id="x-idempotency-key"),
    pytest.param(["idempotency_key"], "idempotency_key", id="underscore"),
    pytest.param(["x_message_id"], "x_message_id", id="x-message-id-underscored"),
    pytest.param(["X-Message-ID"], None, id="the-real-header"),
    pytest.param(["Idempotency-Key"], None, id="the-other-real-header"),
    pytest.param(["Content-Type", "X-Request-ID"], None, id="unrelated"),
])
def test_near_miss_names(names: list[str], found: str | None) -> None:
    assert near_miss_header(names) == found


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"ran"]


def test_wsgi_warns_once_and_still_passes_the_request_through(sqlite_url: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    middleware = CertifiedMiddleware(_app, db_url=sqlite_url, upgrade_schema=True)
    app = webtest.TestApp(middleware)
    with caplog.at_level(logging.WARNING, logger="chttp_server"):
        first = app.post("/orders", b"{}", headers={"Message-ID": "order-1"})
        again = app.post("/orders", b"{}", headers={"Message-ID": "order-1"})
        app.post("/orders", b"{}", headers={"X-Message-ID": "order-2"})
    warnings = [r.getMessage() for r in caplog.records if "NOT certified" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "'Message-Id'" in warnings[0] and "POST /orders" in warnings[0]
    assert "X-Message-ID" in warnings[0]
    # Not taken as an id: both ran, neither is a replay.
    assert "Idempotent-Replayed" not in again.headers and first.body == again.body == b"ran"
    middleware.engine.dispose()


def test_the_warning_shows_with_no_logging_configured(tmp_path: Any) -> None:
    """Python's last-resort handler prints a WARNING to stderr: no setup needed."""
    import subprocess
    import sys

    script = (
        "import webtest\n"
        "from chttp_server import CertifiedMiddleware\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', []); return [b'']\n"
        f"m = CertifiedMiddleware(app, db_url='sqlite:///{tmp_path}/w.db', upgrade_schema=True)\n"
        "t = webtest.TestApp(m)\n"
        "t.post('/x', b'', headers={'X-Idempotency-Key': 'k-1'})\n"
        "t.post('/x', b'', headers={'X-Idempotency-Key': 'k-1'})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("NOT certified") == 1, done.stderr
    assert "'X-Idempotency-Key'" in done.stderr


def test_asgi_warns_on_raw_header_names(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from chttp_server.asgi import CertifiedMiddleware as AsgiMiddleware

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ran"})

    middleware = AsgiMiddleware(app, db_url=sqlite_url, upgrade_schema=True)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = [await client.post("/orders", content=b"{}",
                                         headers=[(b"idempotency_key", b"k-1")])
                       for _ in range(2)]
        await middleware.engine.dispose()
        return answers

    with caplog.at_level(logging.WARNING, logger="chttp_server"):
        answers = asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if "NOT certified" in r.getMessage()]
    assert len(warnings) == 1 and "'idempotency_key'" in warnings[0], warnings
    assert all(answer.status_code == 201 for answer in answers)
