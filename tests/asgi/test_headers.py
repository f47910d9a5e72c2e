"""chttp_server.asgi.incoming.header: what a WSGI server would have put in the environ.

Repeated fields joined by ", " as a WSGI server joins them, names matched
case-insensitively, values decoded as latin-1, and read from the list as it is now.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chttp_server.asgi.incoming import header

NAMES = [b"x-message-id", b"X-Message-ID", b"idempotency-key", b"content-length", b"accept"]


def scanned(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    values = [value.decode("latin-1") for key, value in headers if key.lower() == name]
    return ", ".join(values) if values else None


@given(st.lists(st.tuples(st.sampled_from(NAMES), st.binary(max_size=8)), max_size=8))
def test_a_header_is_every_field_of_its_name_joined(headers):
    scope = {"type": "http", "headers": headers}
    for name in (b"x-message-id", b"idempotency-key", b"content-length", b"accept", b"absent"):
        assert header(scope, name) == scanned(headers, name)


def test_the_list_is_read_as_it_is_now():
    scope = {"type": "http", "headers": [(b"x-message-id", b"one")]}
    assert header(scope, b"x-message-id") == "one"
    scope["headers"].append((b"X-Message-ID", b"two"))
    assert header(scope, b"x-message-id") == "one, two"
    scope["headers"] = [(b"x-message-id", b"three")]
    assert header(scope, b"x-message-id") == "three"
    assert header({"type": "http"}, b"x-message-id") is None
