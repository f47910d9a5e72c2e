"""The bound of bench/minimal_certified.py does what the middleware does on its happy path.

Its figures mean something only if it sends the middleware's SQL and stores what the
middleware stores: here a message it processed is replayed by the real
``CertifiedMiddleware`` byte for byte (the same fingerprint, status, headers and body),
the application ran once, and an id it did not claim is refused, never answered.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from bench.minimal_certified import make_app as make_minimal
from bench.profile import _environ, drive


def _answer(app, message_id: str) -> tuple[str, dict[str, str], bytes]:
    answered = []
    content = b"".join(app(_environ(message_id), lambda status, headers, exc_info=None:
                           answered.append((status, dict(headers)))))
    return answered[0][0], answered[0][1], content


def test_what_the_bound_stores_the_middleware_replays(items_database):
    from bench.app import make_app

    url, engine = items_database
    minimal = make_minimal(url, pool_size=2)
    middleware = make_app("certified", url, pool_size=2)
    status, headers, content = _answer(minimal, "bound-1")
    assert status.startswith("201")
    assert headers["X-Message-URL"] == "/chttp/messages/bound-1"
    replayed_status, replayed_headers, replayed = _answer(middleware, "bound-1")
    assert (replayed_status, replayed) == (status, content)
    assert replayed_headers["Idempotent-Replayed"] == "true"
    assert replayed_headers["X-Message-Expires"] == headers["X-Message-Expires"]
    assert replayed_headers["Content-Type"] == headers["Content-Type"]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM bench_items")).scalar_one() == 1
    with pytest.raises(RuntimeError, match="not claimed"):
        drive(minimal, ["bound-1"])
    with engine.connect() as connection:  # the refused retry ran nothing
        assert connection.execute(text("SELECT count(*) FROM bench_items")).scalar_one() == 1
    drive(minimal, ["bound-2", "bound-3"])  # its pooled connections were left clean
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM bench_items")).scalar_one() == 3
        assert connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
        )).scalar_one() == 0
