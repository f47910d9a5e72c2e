"""The cap on a certified request's body (docs/protocol.rst §4: 413 request-too-large).

The fingerprint needs the whole body in memory before the application runs, so the
receiver refuses a body over ``max_request_bytes``: from ``Content-Length`` before
reading a byte, and while reading a body without one as soon as it passes the cap.
Nothing is run or stored. The body that is accepted is held once, not twice.
"""

from __future__ import annotations

import io
import tracemalloc

import httpx
import pytest
import webob
import webtest
from sqlalchemy import func, select

from chttp_server import CertifiedMiddleware, ConfigurationError
from chttp_server.incoming import read_body
from chttp_core.schema import messages

from .apps import Root, count_writes
from .live import serve_in_thread

LIMIT = 1000


@pytest.fixture
def middleware(engine):
    return CertifiedMiddleware(Root(), engine=engine, max_request_bytes=LIMIT)


def stored_messages(engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(messages)).scalar_one())


def assert_too_large(response) -> None:
    assert response.status_int == 413
    assert response.content_type == "application/problem+json"
    assert response.json["type"] == "request-too-large"
    assert response.json["status"] == 413


class CountingStream:
    """A wsgi.input that hands its bytes over in small pieces and counts what was read."""

    def __init__(self, data: bytes, piece: int = 100) -> None:
        self._data = io.BytesIO(data)
        self.piece = piece
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        want = self.piece if size is None or size < 0 else min(size, self.piece)
        part = self._data.read(want)
        self.consumed += len(part)
        return part


def test_content_length_over_the_cap_is_413_unread_and_nothing_stored(middleware, engine):
    stream = CountingStream(b"x" * (LIMIT + 1))
    request = webob.Request.blank("/echo", method="POST", body=b"")
    request.environ.update({"HTTP_X_MESSAGE_ID": "big-1", "CONTENT_LENGTH": str(LIMIT + 1),
                            "wsgi.input": stream, "webob.is_body_seekable": False})
    response = request.get_response(middleware)
    assert_too_large(response)
    assert stream.consumed == 0, "the body was read although Content-Length was over the cap"
    assert stored_messages(engine) == 0
    assert count_writes(engine) == 0


def test_body_at_the_cap_is_processed(middleware, engine):
    app = webtest.TestApp(middleware)
    response = app.post("/echo", b"y" * LIMIT, headers={"X-Message-ID": "fits"})
    assert response.status_int == 201
    assert response.json["body"] == "y" * LIMIT
    assert count_writes(engine, "echo") == 1


def test_uncertified_requests_are_not_capped(middleware):
    app = webtest.TestApp(middleware)
    assert app.get("/", params={"pad": "z" * (2 * LIMIT)}).text == "root"


def test_chunked_body_over_the_cap_is_413_and_stops_reading(middleware, engine):
    stream = CountingStream(b"z" * (50 * LIMIT))
    request = webob.Request.blank("/echo", method="POST", body=b"")
    request.environ.update({"HTTP_X_MESSAGE_ID": "big-2", "CONTENT_LENGTH": "",
                            "wsgi.input": stream, "wsgi.input_terminated": True,
                            "webob.is_body_seekable": False})
    response = request.get_response(middleware)
    assert_too_large(response)
    assert stream.consumed <= LIMIT + stream.piece
    assert stored_messages(engine) == 0
    assert count_writes(engine) == 0


def test_chunked_body_over_the_cap_through_a_real_server(middleware, engine):
    def chunks():
        for _ in range(20):
            yield b"c" * 100

    with serve_in_thread(middleware) as base_url, httpx.Client(timeout=30) as client:
        refused = client.post(f"{base_url}/echo", content=chunks(),
                              headers={"X-Message-ID": "real-big"})
        small = client.post(f"{base_url}/echo", content=iter([b"ok"]),
                            headers={"X-Message-ID": "real-small"})
    assert refused.status_code == 413
    assert refused.json()["type"] == "request-too-large"
    assert small.status_code == 201
    assert count_writes(engine, "echo") == 1
    assert stored_messages(engine) == 1


def test_negative_cap_is_a_configuration_error(engine):
    with pytest.raises(ConfigurationError, match="max_request_bytes"):
        CertifiedMiddleware(Root(), engine=engine, max_request_bytes=-1)


@pytest.mark.parametrize("content_length", [
    pytest.param(True, id="content-length"),
    pytest.param(False, id="chunked"),
])
def test_an_accepted_body_is_held_once(content_length):
    size = 8 * 1024 * 1024
    stream = CountingStream(b"b" * size, piece=64 * 1024)
    environ = {"wsgi.input": stream, "CONTENT_LENGTH": str(size) if content_length else "",
               "wsgi.input_terminated": True}
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        body = read_body(environ, limit=2 * size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(body) == size
    # Whatever the application reads is the same bytes, not a second copy.
    assert environ["wsgi.input"].read() == body
    assert peak - before < 1.5 * size, f"peak {peak - before} bytes for a {size}-byte body"
