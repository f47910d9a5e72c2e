"""The receiver's metrics and spans, recorded by the SDK's in-memory exporters.

Each outcome of docs/protocol.rst §2-§4 is produced for real (WebTest through
``CertifiedMiddleware`` on SQLite and PostgreSQL) and must increment its own value of
``chttp.server.messages``; the spans carry the message id and neither the scope nor a body.
Flask (in process) and Django (in a subprocess) report through the same hook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import webtest

from chttp_core.db import make_engine
from chttp_server import CertifiedMiddleware
from chttp_server.store import MessageKey
from tests.server.live import REPO_ROOT

SCOPE = "alice-principal"
BODY = b"hello, ledger"
STORED = b'{"ok": true}'


def app(environ, start_response):
    """A plain WSGI application with one path per way a handler can end."""
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("a bug in the handler")
    if path == "/later":
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"not now"]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"x" * 100]
    start_response("201 Created", [("Content-Type", "application/json")])
    return [STORED]


@pytest.fixture
def middleware(db_url):
    front = CertifiedMiddleware(app, db_url=db_url, upgrade_schema=True, claim_timeout=0.5,
                               max_response_bytes=50, max_request_bytes=1000,
                               scope=lambda environ: SCOPE)
    yield front
    front.engine.dispose()


def post(client, path, message_id, body=BODY, status="*", **headers):
    return client.post(path, body, headers={"X-Message-ID": message_id, **headers},
                       content_type="text/plain", status=status)


def test_each_outcome_increments_its_counter(middleware, db_url, otel):
    client = webtest.TestApp(middleware)
    assert post(client, "/ok", "m-1").status_int == 201
    assert post(client, "/ok", "m-1").headers["Idempotent-Replayed"] == "true"
    assert post(client, "/ok", "m-1", body=b"another body").status_int == 422
    assert post(client, "/later", "m-2").status_int == 503
    assert post(client, "/big", "m-3").status_int == 500
    assert post(client, "/ok", "m-4", body=b"y" * 2000).status_int == 413
    assert post(client, "/ok", "m-5", **{"X-Message-First-Sent": "Sat, 01 Jan 2000 00:00:00 GMT"}
                ).status_int == 412
    assert post(client, "/ok", "m-6", **{"X-Message-First-Sent": "yesterday"}).status_int == 400
    assert client.delete("/chttp/messages/m-1").status_int == 204
    assert post(client, "/ok", "m-1").status_int == 410
    with pytest.raises(RuntimeError, match="a bug in the handler"):
        post(client, "/boom", "m-7")
    # Another transaction holds m-8's claim: PostgreSQL waits claim_timeout and answers
    # 409; SQLite cannot tell whose id the lock is for and answers 503 (§4).
    holder = middleware.store.begin()
    try:
        middleware.store.claim(holder, MessageKey(SCOPE, "m-8"), "other", middleware.store.clock())
        busy = post(client, "/ok", "m-8")
    finally:
        middleware.store.rollback(holder)
        holder.close()
    postgres = db_url.startswith("postgresql")
    assert busy.status_int == (409 if postgres else 503)

    expected = {"processed": 1, "replayed": 1, "reused": 1, "rolled_back": 1,
                "response_too_large": 1, "request_too_large": 1, "too_old": 1, "invalid": 1,
                "gone": 1, "error": 1, ("in_progress" if postgres else "store_unavailable"): 1}
    assert otel.counter("chttp.server.messages", "chttp.outcome") == expected
    # Handlers ran for m-1, m-2 (rolled back), m-3 (too large) and m-7 (raised).
    assert otel.histogram("chttp.server.handler.duration")[0] == 4
    # Only m-1's answer was stored.
    assert otel.histogram("chttp.server.response.size") == (1, len(STORED))
    # A claim was timed for every request that reached the store's claim.
    claims = otel.histogram("chttp.server.claim.duration")[0]
    assert claims == (9 if postgres else 8)


def test_a_store_that_is_down_is_store_unavailable(otel):
    front = CertifiedMiddleware(app, db_url="postgresql://chttp@127.0.0.1:1/nowhere",
                                scope=lambda environ: SCOPE)
    try:
        assert post(webtest.TestApp(front), "/ok", "down-1").status_int == 503
    finally:
        front.engine.dispose()
    assert otel.counter("chttp.server.messages", "chttp.outcome") == {"store_unavailable": 1}
    [span] = otel.spans("chttp.receive")
    assert span.attributes["chttp.outcome"] == "store_unavailable"
    assert span.attributes["http.response.status_code"] == 503


def test_spans_carry_the_message_id_and_never_the_scope_or_a_body(middleware, otel):
    client = webtest.TestApp(middleware)
    post(client, "/ok", "span-1")
    [receive] = otel.spans("chttp.receive")
    phases = {s.name: s for s in otel.spans() if s is not receive}
    assert set(phases) == {"chttp.claim", "chttp.handler", "chttp.store"}
    assert receive.attributes["chttp.message_id"] == "span-1"
    assert receive.attributes["chttp.outcome"] == "processed"
    assert receive.attributes["http.response.status_code"] == 201
    assert phases["chttp.store"].attributes["chttp.response.size"] == len(STORED)
    for span in phases.values():
        assert span.context.trace_id == receive.context.trace_id
        assert span.parent.span_id == receive.context.span_id
    for span in otel.spans():
        for value in span.attributes.values():
            assert SCOPE not in str(value)
            assert BODY.decode() not in str(value) and STORED.decode() not in str(value)


def test_the_receive_span_continues_the_senders_trace(middleware, otel):
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    post(webtest.TestApp(middleware), "/ok", "traced-1",
         traceparent=f"00-{trace_id}-{parent_id}-01")
    [receive] = otel.spans("chttp.receive")
    assert format(receive.context.trace_id, "032x") == trace_id
    assert format(receive.parent.span_id, "016x") == parent_id
    assert receive.parent.is_remote


def test_flask_reports_through_the_same_hook(sqlite_url, otel):
    from flask import Flask

    from chttp_server.flask import Certified

    flask_app = Flask(__name__)

    @flask_app.post("/orders")
    def create_order():
        return {"ok": True}, 201

    engine = make_engine(sqlite_url)
    Certified(flask_app, engine=engine, upgrade_schema=True)
    try:
        client = webtest.TestApp(flask_app)
        post(client, "/orders", "flask-1")
        post(client, "/orders", "flask-1")
        post(client, "/orders", "flask-1", body=b"changed")
    finally:
        engine.dispose()
    assert otel.counter("chttp.server.messages", "chttp.outcome") == {
        "processed": 1, "replayed": 1, "reused": 1}
    assert [s.attributes["chttp.message_id"] for s in otel.spans("chttp.receive")] == ["flask-1"] * 3


def test_django_reports_through_the_same_hook(tmp_path):
    """Django's settings are per process: the scenario runs in tests/telemetry/django_scenario.py."""
    done = subprocess.run([sys.executable, "-m", "tests.telemetry.django_scenario", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "CHTTP_TEST_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["statuses"] == [201, 201, 422, 429, 500]
    assert seen["counts"] == {"processed": 1, "replayed": 1, "reused": 1, "rolled_back": 2}
    assert seen["message_ids"] == ["dj-1", "dj-1", "dj-1", "dj-2", "dj-3"]
    assert seen["first_trace"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert seen["handler_spans"] == 3


def test_the_asgi_front_end_reports_through_the_same_hook(db_url, otel):
    """The ASGI middleware's requests run the same MessageTransaction: the same outcomes,
    phases and trace continuation, without a line of telemetry of its own."""
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from chttp_server.asgi import CertifiedMiddleware as AsgiCertifiedMiddleware
    from tests.asgi.conftest import as_driver

    async def ok(request):
        return Response(STORED, status_code=201, media_type="application/json")

    async def later(request):
        return Response(b"not now", status_code=503)

    async def boom(request):
        raise RuntimeError("a bug in the view")

    routes = [Route("/ok", ok, methods=["POST"]), Route("/later", later, methods=["POST"]),
              Route("/boom", boom, methods=["POST"])]
    driver = "aiosqlite" if db_url.startswith("sqlite") else "asyncpg"
    front = AsgiCertifiedMiddleware(Starlette(routes=routes), db_url=as_driver(db_url, driver),
                                    upgrade_schema=True, max_request_bytes=1000,
                                    scope=lambda scope: SCOPE)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front),
                                     base_url="http://t") as client:
            def send(path, message_id, body=BODY, **headers):
                return client.post(path, content=body, headers={"X-Message-ID": message_id, **headers})

            statuses = [(await send("/ok", "a-1", traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")).status_code,
                        (await send("/ok", "a-1")).status_code,
                        (await send("/ok", "a-1", body=b"another")).status_code,
                        (await send("/later", "a-2")).status_code,
                        (await send("/ok", "a-3", body=b"y" * 2000)).status_code]
            with pytest.raises(RuntimeError, match="a bug in the view"):
                await send("/boom", "a-4")
        await front.engine.dispose()
        return statuses

    assert asyncio.run(scenario()) == [201, 201, 422, 503, 413]
    # Starlette's own error middleware (inside ours) answers the view's exception 500
    # before re-raising it: that answer is rolled back like the 503.
    assert otel.counter("chttp.server.messages", "chttp.outcome") == {
        "processed": 1, "replayed": 1, "reused": 1, "rolled_back": 2, "request_too_large": 1}
    receives = otel.spans("chttp.receive")
    assert [span.attributes["chttp.message_id"] for span in receives] == [
        "a-1", "a-1", "a-1", "a-2", "a-3", "a-4"]
    assert format(receives[0].context.trace_id, "032x") == trace_id
    assert {span.name for span in otel.spans()} >= {"chttp.claim", "chttp.handler", "chttp.store"}
