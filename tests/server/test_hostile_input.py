"""Hostile and malformed input: every request gets a clear answer, nothing is half-stored.

Most cases go through WebTest; the ones WebTest's lint (rightly) refuses to send — bytes
outside ASCII, CRLF in a header, a body without ``Content-Length`` or shorter than it —
are handed to the middleware as raw WSGI environs, exactly as a lax server would. The
chunked case also runs through a real waitress server. After each hostile request the
test checks the store and the host table, so "clear answer" also means "nothing kept".
"""

from __future__ import annotations

import io
import json

import httpx
import pytest
import webob
import webob.exc
import webtest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text

import chttp_server
from chttp_server import CertifiedMiddleware, Resource
from chttp_core.schema import messages

from .apps import Root, count_writes, record
from .live import serve_in_thread


#: Parsing cases are refused before the store is touched, so one database shows it; the
#: cases where storing matters run on both.
parsing_only = pytest.mark.parametrize(
    "db_url", [pytest.param("sqlite", id="sqlite")], indirect=True
)


class Conventions(Resource):
    """One child per return-value convention of DESIGN.md."""

    class Bytes(Resource):
        def handle_post(self, req):
            record(req, "bytes")
            return b"\x00\xffraw"

    class Text(Resource):
        def handle_post(self, req):
            record(req, "text")
            return "h\u00e9llo"

    class Nothing(Resource):
        def handle_post(self, req):
            record(req, "none")
            return None

    class Mapping(Resource):
        def handle_post(self, req):
            record(req, "dict")
            return {"ok": True, "n": 1}

    class Raised(Resource):
        def handle_post(self, req):
            record(req, "raised")
            raise webob.exc.HTTPPaymentRequired(detail="top up first")

    class Unencodable(Resource):
        def handle_post(self, req):
            record(req, "unencodable")
            return {"oops": object()}

    class BadSql(Resource):
        def handle_post(self, req):
            record(req, "bad-sql")
            req.chttp.connection.execute(text("SELECT * FROM no_such_table"))

    children = {
        "bytes": Bytes(), "text": Text(), "none": Nothing(), "dict": Mapping(),
        "raised": Raised(), "unencodable": Unencodable(), "bad-sql": BadSql(),
    }


class Hostile(Root):
    children = {**Root.children, "conventions": Conventions()}


@pytest.fixture
def middleware(engine):
    return CertifiedMiddleware(Hostile(), engine=engine)


@pytest.fixture
def app(middleware):
    return webtest.TestApp(middleware)


def stored(engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(messages)).scalar_one())


def problem(response, status: int, problem_type: str) -> dict:
    assert response.status_int == status
    assert response.content_type == "application/problem+json"
    document = json.loads(response.body)
    assert document["type"] == problem_type
    assert document["status"] == status
    return document


def raw(middleware, path: str, *, method: str = "POST", body: bytes = b"", **environ) -> webob.Response:
    """Call the middleware with a hand-made environ (no lint, no client-side checks)."""
    request = webob.Request.blank(path, method=method, body=body)
    request.environ.update(environ)
    return request.get_response(middleware)


# -- ids in headers -----------------------------------------------------------------


@parsing_only
@pytest.mark.parametrize("header, value", [
    pytest.param("X-Message-ID", "a" * 65536, id="huge-message-id"),
    pytest.param("Idempotency-Key", '"' + "a" * 65536 + '"', id="huge-idempotency-key"),
    pytest.param("X-Message-ID", "a" * 129, id="one-too-long"),
    pytest.param("X-Message-ID", "a%3Ab", id="percent-encoded"),
    pytest.param("X-Message-ID", "a/b", id="slash"),
    pytest.param("X-Message-ID", "a b", id="inner-space"),
    pytest.param("Idempotency-Key", '"a\\"b"', id="escaped-quote"),
    pytest.param("Idempotency-Key", '"abc', id="unterminated-string"),
])
def test_malformed_ids_are_400_and_nothing_runs(app, engine, header, value):
    response = app.post("/echo", b"x", headers={header: value}, status="*")
    document = problem(response, 400, "invalid-message-id")
    assert len(response.body) < 1024, "the problem must not echo a huge id back"
    assert value not in json.dumps(document) or len(value) < 200
    assert count_writes(engine) == 0 and stored(engine) == 0


@parsing_only
@pytest.mark.parametrize("value", [
    pytest.param("caf\u00e9", id="latin-1"),
    pytest.param("caf\u00c3\u00a9", id="utf-8-as-latin-1"),
    pytest.param("abc\r\nX-Injected: 1", id="crlf"),
    pytest.param("abc\nX-Injected: 1", id="lf"),
    pytest.param("abc\x00", id="nul"),
    pytest.param("", id="empty"),
])
def test_ids_with_bytes_a_lax_server_lets_through_are_400(middleware, engine, value):
    for key in ("HTTP_X_MESSAGE_ID", "HTTP_IDEMPOTENCY_KEY"):
        response = raw(middleware, "/echo", body=b"x", **{key: value})
        problem(response, 400, "invalid-message-id")
        assert "X-Injected" not in response.headers
    assert count_writes(engine) == 0 and stored(engine) == 0


@parsing_only
def test_crlf_in_first_sent_is_400_without_injection(middleware, engine):
    response = raw(middleware, "/echo", body=b"x", HTTP_X_MESSAGE_ID="fs-1",
                   HTTP_X_MESSAGE_FIRST_SENT="\r\nX-Injected: 1")
    problem(response, 400, "invalid-first-sent")
    assert "X-Injected" not in response.headers
    assert count_writes(engine) == 0 and stored(engine) == 0


# -- the message resource -----------------------------------------------------------


@parsing_only
@pytest.mark.parametrize("path", [
    pytest.param("/chttp/messages/" + "a" * 10000, id="very-long"),
    pytest.param("/chttp/messages/", id="empty-id"),
    pytest.param("/chttp/messages/a/b", id="nested"),
    pytest.param("/chttp/messages/%00", id="nul"),
    pytest.param("/chttp/messages/caf%C3%A9", id="utf-8"),
])
def test_hostile_message_paths_are_404(app, path):
    for method in ("get", "delete"):
        response = getattr(app, method)(path, status="*")
        problem(response, 404, "message-not-found")
        assert len(response.body) < 1024


def test_percent_encoded_message_url_is_decoded_once(app):
    created = app.post("/echo", b"x", headers={"X-Message-ID": "ord:1~x"})
    url = created.headers["X-Message-URL"]
    assert url == "/chttp/messages/ord%3A1~x"
    assert app.get(url).body == created.body
    # A doubly encoded path names the literal id "ord%3A1~x", which cannot exist.
    problem(app.get("/chttp/messages/ord%253A1~x", status="*"), 404, "message-not-found")


def test_head_and_options_on_the_message_resource(app):
    created = app.post("/echo", b"x", headers={"X-Message-ID": "h-1"})
    head = app.head("/chttp/messages/h-1")
    assert head.status_int == 201
    assert head.body == b""
    assert head.headers["Idempotent-Replayed"] == "true"
    assert head.headers["Content-Length"] == str(len(created.body))
    options = app.options("/chttp/messages/h-1", status="*")
    problem(options, 405, "method-not-allowed")
    assert options.headers["Allow"] == "GET, HEAD, DELETE"


# -- bodies -------------------------------------------------------------------------


def test_body_without_content_length_is_read_when_the_stream_is_terminated(middleware, engine):
    response = raw(middleware, "/echo", body=b"", HTTP_X_MESSAGE_ID="chunked-1",
                   CONTENT_LENGTH="", **{"wsgi.input": io.BytesIO(b"chunked payload"),
                                         "wsgi.input_terminated": True})
    assert response.status_int == 201
    assert response.json["body"] == "chunked payload"
    # The same body sent with Content-Length is the same request: a replay, not a 422.
    again = raw(middleware, "/echo", body=b"chunked payload", HTTP_X_MESSAGE_ID="chunked-1")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.body == response.body
    assert count_writes(engine, "echo") == 1


def test_body_without_content_length_on_an_unterminated_stream_is_empty(middleware, engine):
    """PEP 3333: without Content-Length and input_terminated, the body is empty."""
    response = raw(middleware, "/echo", body=b"", HTTP_X_MESSAGE_ID="unterminated-1",
                   CONTENT_LENGTH="", **{"wsgi.input": io.BytesIO(b"never read")})
    assert response.status_int == 201
    assert response.json["body"] == ""


def test_chunked_body_through_a_real_server(middleware, engine):
    def chunks():
        yield b"chunk one, "
        yield b"chunk two"

    with serve_in_thread(middleware) as base_url, httpx.Client(timeout=30) as client:
        first = client.post(f"{base_url}/echo", content=chunks(),
                            headers={"X-Message-ID": "real-chunked"})
        assert "Content-Length" not in first.request.headers
        again = client.post(f"{base_url}/echo", content=b"chunk one, chunk two",
                            headers={"X-Message-ID": "real-chunked"})
    assert first.status_code == 201
    assert first.json()["body"] == "chunk one, chunk two"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert count_writes(engine, "echo") == 1


def test_body_shorter_than_content_length_is_refused_and_not_stored(middleware, engine):
    """A truncated body (the connection dropped mid-upload) must not be processed: its
    fingerprint would make the sender's complete retry look like a reused id (422)."""
    response = raw(middleware, "/echo", body=b"", HTTP_X_MESSAGE_ID="short-1",
                   CONTENT_LENGTH="100", **{"wsgi.input": io.BytesIO(b"only ten b")})
    problem(response, 400, "incomplete-body")
    assert count_writes(engine) == 0 and stored(engine) == 0
    complete = raw(middleware, "/echo", body=b"x" * 100, HTTP_X_MESSAGE_ID="short-1")
    assert complete.status_int == 201
    assert count_writes(engine, "echo") == 1


@pytest.mark.parametrize("length", [
    pytest.param("-5", id="negative"), pytest.param("ten", id="not-a-number"),
])
def test_nonsense_content_length_is_an_empty_body(middleware, engine, length):
    response = raw(middleware, "/echo", body=b"", HTTP_X_MESSAGE_ID="cl-1",
                   CONTENT_LENGTH=length, **{"wsgi.input": io.BytesIO(b"payload")})
    assert response.status_int == 201
    assert response.json["body"] == ""


# -- methods and traversal on certified paths ----------------------------------------


def test_head_on_a_certified_get_resource_is_stored_and_replayed(app, engine):
    first = app.head("/", headers={"X-Message-ID": "head-1"})
    assert first.status_int == 200 and first.body == b""
    again = app.head("/", headers={"X-Message-ID": "head-1"})
    assert again.headers["Idempotent-Replayed"] == "true"
    # GET with the same id is another request (method is fingerprinted): 422.
    problem(app.get("/", headers={"X-Message-ID": "head-1"}, status="*"), 422,
            "message-id-reused")


@pytest.mark.parametrize("method, path, status, allow", [
    pytest.param("OPTIONS", "/echo", 405, "POST, PUT", id="options"),
    pytest.param("GET", "/echo", 405, "POST, PUT", id="get-on-post-only"),
    pytest.param("DELETE", "/", 405, "GET, HEAD", id="delete-on-root"),
    pytest.param("POST", "/nope", 404, None, id="unknown-child"),
    pytest.param("POST", "/echo/deeper", 404, None, id="below-a-leaf"),
])
def test_traversal_answers_are_definitive_and_stored(app, engine, method, path, status, allow):
    """404/405 are 4xx answers of the application: stored and replayed like any other."""
    headers = {"X-Message-ID": f"m-{method}-{status}"}
    first = app.request(path, method=method, headers=headers, status="*")
    assert first.status_int == status
    if allow is not None:
        assert first.headers["Allow"] == allow
    again = app.request(path, method=method, headers=headers, status="*")
    assert again.status_int == status
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.body == first.body
    assert stored(engine) == 1


# -- return-value conventions ---------------------------------------------------------


@pytest.mark.parametrize("child, status, content_type, body", [
    pytest.param("bytes", 200, "application/octet-stream", b"\x00\xffraw", id="bytes"),
    pytest.param("text", 200, "text/plain", "h\u00e9llo".encode(), id="str"),
    pytest.param("none", 204, None, b"", id="none"),
    pytest.param("dict", 200, "application/json", b'{"ok":true,"n":1}', id="dict"),
    pytest.param("raised", 402, "text/plain", None, id="webob-exc"),
])
def test_return_value_conventions_store_and_replay(app, engine, child, status, content_type, body):
    headers = {"X-Message-ID": f"conv-{child}", "Accept": "text/plain"}
    first = app.post(f"/conventions/{child}", b"", headers=headers, status="*")
    assert first.status_int == status
    if content_type is not None:
        assert first.content_type == content_type
    if body is not None:
        assert first.body == body
    again = app.post(f"/conventions/{child}", b"", headers=headers, status="*")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (again.status_int, again.body) == (first.status_int, first.body)
    assert count_writes(engine) == 1


def test_an_unencodable_return_value_is_an_error_and_rolled_back(app, engine):
    with pytest.raises(TypeError, match="JSON cannot encode"):
        app.post("/conventions/unencodable", b"", headers={"X-Message-ID": "bad-json"})
    assert count_writes(engine) == 0 and stored(engine) == 0


def test_the_applications_own_sql_error_is_its_error_not_store_unavailable(app, engine):
    """A handler's failing statement (SQLite reports a missing table as an
    OperationalError, like a lost connection) must surface as the application's
    exception (a 500 from the server), not as 503 "the app was not run"."""
    with pytest.raises(sa_exc.DBAPIError, match="no_such_table"):
        app.post("/conventions/bad-sql", b"", headers={"X-Message-ID": "bad-sql"})
    assert count_writes(engine) == 0 and stored(engine) == 0


# -- the public API --------------------------------------------------------------------


def test_public_api_is_pinned():
    assert sorted(chttp_server.__all__) == sorted([
        "CertifiedMiddleware", "Resource", "Request", "CertifiedContext", "get_context",
        "MessageStore", "MessageTransaction", "remote_user_scope", "require_for_methods",
        "ChttpServerError", "ConfigurationError", "SchemaOutOfDateError", "ProtocolError",
        "InvalidMessageId", "MessageIdRequired", "InvalidFirstSent", "IncompleteBody",
        "MessageNotFound", "MessageInProgress", "MessageGone", "MessageAcknowledged",
        "MessageExpired", "MessageOutcomeUnknown", "MessageTooOld", "MessageIdReused",
        "RequestTooLarge",
        "ResponseTooLarge", "StoreUnavailable",
    ])
    for name in chttp_server.__all__:
        assert getattr(chttp_server, name) is not None
