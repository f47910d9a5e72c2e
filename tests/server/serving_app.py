"""A plain WSGI application for ``test_serving``: answers 200 with the body's length.

It needs no host tables, so ``chttp-server serve --upgrade`` on a fresh SQLite file
serves it certified at once.
"""

from __future__ import annotations

from typing import Any, Callable


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"got {len(body)} bytes".encode()]
