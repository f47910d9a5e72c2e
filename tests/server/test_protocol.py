"""docs/protocol.rst §1–§4 over WebTest, on SQLite and on a real PostgreSQL.

Each test names the rule it guards; a handler's effect is counted in the host's own
table, so "ran once" means "committed once", not "was called once".
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
import webtest
from sqlalchemy import create_engine

from chttp_core.db import make_engine
from chttp_core.wire import format_http_date
from chttp_server import CertifiedMiddleware, ConfigurationError, require_for_methods
from chttp_core.migrate import upgrade

from .apps import BINARY_BODY, Root, count_writes


class Clock:
    """A receiver clock the test can move forward."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_app(engine, clock):
    def make(**options):
        options.setdefault("max_response_bytes", 4096)
        options.setdefault("clock", clock)
        middleware = CertifiedMiddleware(Root(), engine=engine, **options)
        return webtest.TestApp(middleware)

    return make


@pytest.fixture
def app(make_app):
    return make_app()


def problem(response) -> dict:
    assert response.content_type == "application/problem+json"
    document = json.loads(response.body)
    assert document["status"] == response.status_int
    return document


def post(app, path, message_id=None, body=b"payload", status="*", **headers):
    if message_id is not None:
        headers["X-Message-ID"] = message_id
    return app.post(path, body, headers=headers, status=status)


# -- §1 request headers -----------------------------------------------------------------


def test_request_without_id_passes_through_untouched(app, engine):
    response = app.get("/")
    assert response.text == "root"
    assert "X-Message-URL" not in response.headers


def test_first_certified_request_runs_and_carries_message_headers(app, engine):
    response = post(app, "/echo", "m-1")
    assert response.status_int == 201
    assert response.json["message_id"] == "m-1"
    assert response.headers["X-Message-URL"] == "/chttp/messages/m-1"
    expires = datetime.strptime(response.headers["X-Message-Expires"], "%a, %d %b %Y %H:%M:%S GMT")
    assert expires.replace(tzinfo=timezone.utc) > datetime.now(timezone.utc) + timedelta(days=14)
    assert "Idempotent-Replayed" not in response.headers
    assert count_writes(engine) == 1


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Idempotency-Key": '"k-1"'}, id="sf-string"),
        pytest.param({"Idempotency-Key": "k-1"}, id="bare-token"),
        pytest.param({"X-Message-ID": "k-1", "Idempotency-Key": '"k-1"'}, id="both-agree"),
    ],
)
def test_both_headers_name_one_id_space(app, engine, headers):
    first = post(app, "/echo", "k-1")
    again = app.post("/echo", b"payload", headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.body == first.body
    assert count_writes(engine) == 1


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Message-ID": ""}, id="empty"),
        pytest.param({"X-Message-ID": "a" * 129}, id="too-long"),
        pytest.param({"X-Message-ID": "has space"}, id="space"),
        pytest.param({"X-Message-ID": "sl/ash"}, id="slash"),
        pytest.param({"X-Message-ID": "caf\xe9"}, id="non-ascii"),
        pytest.param({"X-Message-ID": "a\tb"}, id="control"),
        pytest.param({"Idempotency-Key": '""'}, id="empty-sf-string"),
        pytest.param({"Idempotency-Key": '"abc'}, id="unbalanced-quote"),
        pytest.param({"Idempotency-Key": '"a\\"b"'}, id="sf-escape"),
        pytest.param({"Idempotency-Key": "?1"}, id="sf-boolean"),
        pytest.param({"X-Message-ID": "one", "Idempotency-Key": '"two"'}, id="headers-disagree"),
    ],
)
def test_malformed_id_is_400_and_runs_nothing(app, engine, headers):
    response = app.post("/echo", b"x", headers=headers, status=400)
    assert problem(response)["type"] == "invalid-message-id"
    assert count_writes(engine) == 0


def test_longest_valid_id_is_accepted(app):
    message_id = "A-z0.9_~:" * 14 + "xy"
    assert len(message_id) == 128
    assert post(app, "/echo", message_id).status_int == 201


def test_required_id_policy(make_app, engine):
    app = make_app(require_id=require_for_methods("POST"))
    response = app.post("/echo", b"x", status=400)
    assert problem(response)["type"] == "message-id-required"
    assert app.get("/").text == "root"
    assert count_writes(engine) == 0


# -- §2 what the receiver does ------------------------------------------------------------


def test_retry_replays_byte_for_byte_and_runs_once(app, engine):
    first = post(app, "/echo", "m-2")
    retry = post(app, "/echo", "m-2")
    assert retry.status == first.status
    assert retry.body == first.body
    assert retry.headers["Idempotent-Replayed"] == "true"
    first_headers = [h for h in first.headerlist]
    replay_headers = [h for h in retry.headerlist if h[0] != "Idempotent-Replayed"]
    assert replay_headers == first_headers
    assert count_writes(engine) == 1


def test_multi_valued_headers_survive_replay(app):
    post(app, "/echo", "m-3")
    retry = post(app, "/echo", "m-3")
    assert retry.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert retry.headers.getall("X-Multi") == ["one", "two"]


def test_binary_body_replays_byte_for_byte(app):
    first = post(app, "/binary", "bin-1")
    retry = post(app, "/binary", "bin-1")
    assert first.body == BINARY_BODY
    assert retry.body == BINARY_BODY
    assert retry.content_type == "application/octet-stream"


@pytest.mark.parametrize(
    "path, body",
    [
        pytest.param("/echo", b"other payload", id="other-body"),
        pytest.param("/binary", b"payload", id="other-path"),
        pytest.param("/echo?x=1", b"payload", id="other-query"),
    ],
)
def test_reused_id_for_another_request_is_422(app, engine, path, body):
    post(app, "/echo", "reuse-1")
    response = app.post(path, body, headers={"X-Message-ID": "reuse-1"}, status=422)
    document = problem(response)
    assert document["type"] == "message-id-reused"
    assert document["message_id"] == "reuse-1"
    assert count_writes(engine) == 1


def test_other_method_with_same_id_is_422(app):
    post(app, "/echo", "reuse-2")
    response = app.put("/echo", b"payload", headers={"X-Message-ID": "reuse-2"}, status=422)
    assert problem(response)["type"] == "message-id-reused"


def test_4xx_is_stored_with_its_writes(app, engine):
    first = post(app, "/refuse", "r-1")
    assert first.status_int == 409
    retry = post(app, "/refuse", "r-1")
    assert retry.status_int == 409
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.body == first.body
    assert count_writes(engine, "refuse") == 1


def test_5xx_rolls_back_and_leaves_the_key_free(app, engine):
    response = post(app, "/fail", "f-1")
    assert response.status_int == 503
    assert response.body == b"try later"
    assert "X-Message-URL" not in response.headers
    assert count_writes(engine) == 0
    # The key is free: the same id now runs whatever request comes with it.
    assert post(app, "/echo", "f-1").status_int == 201
    assert count_writes(engine) == 1


def test_429_rolls_back_and_leaves_the_key_free(app, engine):
    response = post(app, "/throttle", "t-429")
    assert response.status_int == 429
    assert "X-Message-URL" not in response.headers
    assert count_writes(engine) == 0
    assert post(app, "/echo", "t-429").status_int == 201
    assert count_writes(engine) == 1


def test_exception_rolls_back_and_leaves_the_key_free(app, engine):
    with pytest.raises(RuntimeError, match="handler exploded"):
        post(app, "/boom", "x-1")
    assert count_writes(engine) == 0
    assert post(app, "/echo", "x-1").status_int == 201


def test_orm_session_joins_the_transaction(app, engine):
    assert post(app, "/orm", "orm-1").json == {"orm": True}
    assert count_writes(engine, "orm") == 1
    # session.commit() inside the handler must not have committed past a later 5xx.
    assert post(app, "/orm?then=fail", "orm-2").status_int == 500
    assert count_writes(engine, "orm") == 1


def test_the_claims_lock_timeout_does_not_leak_into_the_handler(pg_url):
    # The claim bounds its own wait with a transaction-local lock_timeout; the
    # application's statements must keep the session's value.
    engine = make_engine(pg_url, connect_args={"options": "-c lock_timeout=7s"})
    try:
        upgrade(engine)
        app = webtest.TestApp(CertifiedMiddleware(Root(), engine=engine, claim_timeout=2))
        response = app.post("/lock-timeout", b"", headers={"X-Message-ID": "lt-1"})
        assert response.text == "7s"
    finally:
        engine.dispose()


def test_response_over_the_cap_is_500_and_rolled_back(app, engine):
    response = app.post("/large?size=5000", b"", headers={"X-Message-ID": "big-1"}, status=500)
    assert problem(response)["type"] == "response-too-large"
    assert count_writes(engine) == 0
    assert app.post("/large?size=10", b"", headers={"X-Message-ID": "big-1"}).status_int == 200


def test_response_at_the_cap_is_stored(app):
    first = app.post("/large?size=4096", b"", headers={"X-Message-ID": "cap-1"})
    retry = app.post("/large?size=4096", b"", headers={"X-Message-ID": "cap-1"})
    assert retry.body == first.body == b"x" * 4096


def test_message_url_includes_script_name(app):
    response = app.post("/echo", b"p", headers={"X-Message-ID": "sn-1"},
                        extra_environ={"SCRIPT_NAME": "/api"})
    assert response.headers["X-Message-URL"] == "/api/chttp/messages/sn-1"


# -- §3 the message resource ------------------------------------------------------------


def test_get_message_replays_the_stored_response(app):
    first = post(app, "/echo", "g-1")
    stored = app.get("/chttp/messages/g-1")
    assert stored.status == first.status
    assert stored.body == first.body
    assert stored.headers["Idempotent-Replayed"] == "true"
    assert stored.headers.getall("Set-Cookie") == first.headers.getall("Set-Cookie")


def test_unknown_message_is_404(app):
    assert problem(app.get("/chttp/messages/nope", status=404))["type"] == "message-not-found"
    assert app.delete("/chttp/messages/nope", status=404).status_int == 404
    assert app.get("/chttp/messages/bad%20id", status=404).status_int == 404


def test_delete_acknowledges_and_leaves_a_tombstone(app, engine):
    post(app, "/echo", "ack-1")
    assert app.delete("/chttp/messages/ack-1").status_int == 204
    assert app.delete("/chttp/messages/ack-1").status_int == 204
    gone = app.get("/chttp/messages/ack-1", status=410)
    assert problem(gone)["type"] == "message-acknowledged"
    retry = post(app, "/echo", "ack-1", status=410)
    assert problem(retry)["type"] == "message-acknowledged"
    assert count_writes(engine) == 1


def test_message_resource_refuses_other_methods(app):
    post(app, "/echo", "meth-1")
    response = app.post("/chttp/messages/meth-1", b"", status=405)
    assert response.headers["Allow"] == "GET, HEAD, DELETE"


# -- §4 retention ---------------------------------------------------------------------


def test_expired_message_is_410_until_purged(make_app, engine, clock):
    app = make_app(retention=timedelta(hours=1))
    middleware = app.app
    post(app, "/echo", "exp-1")
    clock.now += timedelta(hours=1, seconds=1)
    assert problem(app.get("/chttp/messages/exp-1", status=410))["type"] == "message-expired"
    assert problem(post(app, "/echo", "exp-1", status=410))["type"] == "message-expired"
    assert middleware.store.purge(batch_size=10) == 1
    assert middleware.store.count() == 0


def test_first_sent_older_than_retention_is_412_for_an_unknown_id(make_app, engine, clock):
    app = make_app(retention=timedelta(hours=1))
    old = format_http_date(clock.now - timedelta(hours=2))
    response = post(app, "/echo", "old-1", status=412, **{"X-Message-First-Sent": old})
    assert problem(response)["type"] == "message-too-old"
    assert count_writes(engine) == 0
    recent = format_http_date(clock.now - timedelta(minutes=5))
    assert post(app, "/echo", "new-1", **{"X-Message-First-Sent": recent}).status_int == 201


def test_first_sent_does_not_block_the_replay_of_a_known_id(make_app, clock):
    app = make_app(retention=timedelta(hours=1))
    post(app, "/echo", "known-1")
    clock.now += timedelta(minutes=30)
    old = format_http_date(clock.now - timedelta(hours=2))
    retry = post(app, "/echo", "known-1", **{"X-Message-First-Sent": old})
    assert retry.headers["Idempotent-Replayed"] == "true"


def test_malformed_first_sent_is_400(app, engine):
    response = post(app, "/echo", "fs-1", status=400, **{"X-Message-First-Sent": "yesterday"})
    assert problem(response)["type"] == "invalid-first-sent"
    assert count_writes(engine) == 0


def test_purge_works_in_bounded_batches(make_app, engine, clock):
    app = make_app(retention=timedelta(minutes=1))
    for number in range(7):
        post(app, "/echo", f"p-{number}")
    clock.now += timedelta(minutes=2)
    post(app, "/echo", "fresh")
    store = app.app.store
    assert store.purge(batch_size=3, max_batches=1) == 3
    assert store.purge(batch_size=3) == 4
    assert store.count() == 1


def test_purge_pauses_between_batches(make_app, clock, monkeypatch):
    """``pause`` sleeps between batches (not before the first or after the last), and
    the purge still deletes every expired row."""
    import chttp_server.purge

    app = make_app(retention=timedelta(minutes=1))
    for number in range(7):
        post(app, "/echo", f"pp-{number}")
    clock.now += timedelta(minutes=2)
    slept: list[float] = []
    monkeypatch.setattr(chttp_server.purge.time, "sleep", slept.append)
    store = app.app.store
    assert store.purge(batch_size=3, pause=0.25) == 7
    assert slept == [0.25, 0.25]  # batches of 3, 3 and 1
    assert store.count() == 0
    with pytest.raises(ValueError, match="pause"):
        store.purge(pause=-1)


def test_purge_paced_by_its_share_backs_off_as_batches_slow_down(make_app, clock, monkeypatch):
    """``share`` scales each pause from the batch before it: a batch that took longer (a
    store busy with live traffic) is followed by a longer pause, so the purge never
    spends more than its share of the time deleting; a fixed ``pause`` still floors it."""
    import types

    import chttp_server.purge

    app = make_app(retention=timedelta(minutes=1))
    for number in range(7):
        post(app, "/echo", f"ps-{number}")
    clock.now += timedelta(minutes=2)
    batch_seconds = iter([0.1, 0.3, 0.05])        # what each batch of 3, 3 and 1 "took"
    readings: list[float] = []
    slept: list[float] = []

    def monotonic() -> float:                      # called before and after each batch
        if len(readings) % 2 == 0:
            readings.append(100.0)
        else:
            readings.append(100.0 + next(batch_seconds))
        return readings[-1]

    monkeypatch.setattr(chttp_server.purge, "time",
                        types.SimpleNamespace(monotonic=monotonic, sleep=slept.append))
    store = app.app.store
    assert store.purge(batch_size=3, share=0.2) == 7
    assert slept == pytest.approx([0.4, 1.2])     # 4× each batch before: at most 20 % deleting
    assert store.count() == 0
    for wrong in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="share"):
            store.purge(share=wrong)


# -- scoping ----------------------------------------------------------------------------


def test_scopes_are_isolated(app, engine):
    alice = {"REMOTE_USER": "alice"}
    bob = {"REMOTE_USER": "bob"}
    first = app.post("/echo", b"p", headers={"X-Message-ID": "s-1"}, extra_environ=alice)
    # Bob's same id is his own message: it runs, and does not replay Alice's.
    bobs = app.post("/echo", b"p", headers={"X-Message-ID": "s-1"}, extra_environ=bob)
    assert "Idempotent-Replayed" not in bobs.headers
    assert bobs.json["scope"] == "bob" and first.json["scope"] == "alice"
    assert count_writes(engine) == 2
    app.post("/echo", b"p", headers={"X-Message-ID": "only-alice"}, extra_environ=alice)
    assert app.get("/chttp/messages/only-alice", extra_environ=bob, status=404)
    assert app.delete("/chttp/messages/only-alice", extra_environ=bob, status=404)
    assert app.get("/chttp/messages/only-alice", extra_environ=alice).status_int == 201
    anonymous = app.get("/chttp/messages/only-alice", status=404)
    assert anonymous.status_int == 404


def test_custom_scope_function(make_app, engine):
    app = make_app(scope=lambda environ: environ.get("HTTP_X_TENANT", ""))
    app.post("/echo", b"p", headers={"X-Message-ID": "t-1", "X-Tenant": "a"})
    other = app.post("/echo", b"p", headers={"X-Message-ID": "t-1", "X-Tenant": "b"})
    assert "Idempotent-Replayed" not in other.headers
    assert count_writes(engine) == 2


# -- configuration ----------------------------------------------------------------------


def test_refuses_to_be_stacked_twice(engine):
    inner = CertifiedMiddleware(Root(), engine=engine)
    with pytest.raises(ConfigurationError, match="already applied"):
        CertifiedMiddleware(inner, engine=engine)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="no-store"),
        pytest.param({"db_url": "sqlite://", "engine": "x"}, id="two-stores"),
        pytest.param({"db_url": "sqlite://", "retention": timedelta(0)}, id="retention"),
        pytest.param({"db_url": "sqlite://", "claim_timeout": 0}, id="claim-timeout"),
        pytest.param({"db_url": "sqlite://", "message_prefix": "/m"}, id="prefix"),
    ],
)
def test_configuration_mistakes_raise_at_construction(options):
    with pytest.raises(ConfigurationError):
        CertifiedMiddleware(Root(), **options)


def test_refuses_a_schema_behind_the_code(tmp_path):
    from chttp_server import SchemaOutOfDateError

    sqlite3.connect(tmp_path / "empty.db").close()   # a database, without the chttp tables
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(SchemaOutOfDateError, match="chttp-server db upgrade"):
        CertifiedMiddleware(Root(), db_url=url)
    # upgrade_schema=True brings it to head instead.
    CertifiedMiddleware(Root(), db_url=url, upgrade_schema=True)
    CertifiedMiddleware(Root(), db_url=url)


def test_plain_postgresql_url_uses_psycopg2(pg_url):
    engine = make_engine(pg_url)
    assert engine.dialect.driver == "psycopg2"
    assert pg_url.startswith("postgresql://")
    engine.dispose()
    create_engine("sqlite://").dispose()
