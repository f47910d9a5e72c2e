"""Header values an attacker chooses: dates that overflow, dot-segment ids, RFC 8941 items
other than a string, principals wider than the store's column (issue 11, items 2-5).

Each case runs on SQLite and PostgreSQL (the failures were backend-specific: a 500 on one,
silently accepted on the other) and checks the store afterwards, so a refusal is also
proof that nothing was kept.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import webtest
from sqlalchemy import func, select

from chttp_core.schema import messages
from chttp_core.wire import (
    MAX_SCOPE_LENGTH,
    InvalidMessageIdError,
    format_idempotency_key,
    is_valid_message_id,
    parse_http_date,
    parse_idempotency_key,
    scope_key,
)
from chttp_server import CertifiedMiddleware

from .apps import Root, count_writes


def stored(engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(messages)).scalar_one())


def stored_scopes(engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(select(messages.c.scope)).scalars())


def problem(response, status: int, problem_type: str) -> dict:
    assert response.status_int == status, response.body
    assert response.content_type == "application/problem+json"
    document = json.loads(response.body)
    assert document["type"] == problem_type
    assert document["status"] == status
    return document


@pytest.fixture
def app(engine):
    return webtest.TestApp(CertifiedMiddleware(Root(), engine=engine))


# -- X-Message-First-Sent (item 2) -----------------------------------------------------

OVERFLOWING_DATES = [
    pytest.param("Fri, 31 Dec 9999 23:59:59 -1200", id="year-10000-after-utc"),
    pytest.param("Fri, 31 Dec 9999 23:59:59 -2359", id="widest-offset"),
    pytest.param("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", id="huge-year"),
    pytest.param("Mon, 01 Jan 2024 99:00:00 GMT", id="hour-99"),
    pytest.param("Mon, 32 Jan 2024 00:00:00 GMT", id="day-32"),
    pytest.param("Mon, 01 Jan 2024 00:00:00 +99999999999999999999", id="huge-offset"),
]


@pytest.mark.parametrize("raw", OVERFLOWING_DATES)
def test_a_date_that_cannot_be_represented_is_a_value_error(raw):
    with pytest.raises(ValueError, match="not an HTTP-date"):
        parse_http_date(raw)


@pytest.mark.parametrize("raw", OVERFLOWING_DATES)
def test_an_overflowing_first_sent_date_is_400_on_every_backend(app, engine, raw):
    response = app.post("/echo", b"x", status="*",
                        headers={"X-Message-ID": "fs-overflow", "X-Message-First-Sent": raw})
    problem(response, 400, "invalid-first-sent")
    assert stored(engine) == 0 and count_writes(engine) == 0


# -- dot-segment ids (item 4) ------------------------------------------------------------


@pytest.mark.parametrize("value", [".", ".."])
def test_dot_segment_ids_are_invalid(value):
    assert not is_valid_message_id(value)
    assert is_valid_message_id(value * 3) and is_valid_message_id(f"a{value}")
    with pytest.raises(InvalidMessageIdError):
        parse_idempotency_key(f'"{value}"')
    with pytest.raises(InvalidMessageIdError):
        format_idempotency_key(value)  # the sender never builds the header


@pytest.mark.parametrize("header, value", [
    pytest.param("X-Message-ID", ".", id="x-message-id-dot"),
    pytest.param("X-Message-ID", "..", id="x-message-id-dotdot"),
    pytest.param("X-Message-ID", " .. ", id="x-message-id-padded"),
    pytest.param("Idempotency-Key", '"."', id="key-dot"),
    pytest.param("Idempotency-Key", '".."', id="key-dotdot"),
    pytest.param("Idempotency-Key", "..", id="key-unquoted-dotdot"),
])
def test_dot_segment_ids_are_400(app, engine, header, value):
    response = app.post("/echo", b"x", headers={header: value}, status="*")
    problem(response, 400, "invalid-message-id")
    assert stored(engine) == 0 and count_writes(engine) == 0


def test_ids_made_of_dots_but_not_dot_segments_still_work(app, engine):
    created = app.post("/echo", b"x", headers={"X-Message-ID": "..."})
    assert created.status_int == 201
    assert created.headers["X-Message-URL"] == "/chttp/messages/..."
    assert app.get(created.headers["X-Message-URL"]).body == created.body


# -- Idempotency-Key as an RFC 8941 item (item 5) ----------------------------------------


@pytest.mark.parametrize("value, expected", [
    pytest.param('"k"', "k", id="sf-string"),
    pytest.param('"k";p=1', "k", id="integer-parameter"),
    pytest.param('"k";a;b=?0;c=:YWJj:;d=tok/en;e=-1.5;f="x\\"y"', "k", id="every-parameter-type"),
    pytest.param('"k"; p=1', "k", id="space-after-semicolon"),
    pytest.param('  "k";p  ', "k", id="surrounding-space"),
    pytest.param("k", "k", id="unquoted-legacy"),
    pytest.param("0f8fad5b-d9cb-469f-a165-70867728950e", "0f8fad5b-d9cb-469f-a165-70867728950e",
                 id="unquoted-uuid"),
])
def test_idempotency_key_items_that_carry_an_id(value, expected):
    assert parse_idempotency_key(value) == expected


@pytest.mark.parametrize("value", [
    pytest.param(":YWJj:", id="sf-binary"),
    pytest.param(":abc", id="broken-sf-binary"),
    pytest.param('("k")', id="inner-list"),
    pytest.param('"a", "b"', id="list-of-strings"),
    pytest.param("a, b", id="list-of-tokens"),
    pytest.param('"k";P=1', id="uppercase-parameter-name"),
    pytest.param('"k";p=', id="parameter-without-value"),
    pytest.param('"k";p=(1)', id="inner-list-parameter"),
    pytest.param('"k" ;p=1', id="space-before-semicolon"),
    pytest.param('"k"x', id="trailing-garbage"),
    pytest.param('"k\\x"', id="invalid-escape"),
    pytest.param("k;p=1", id="unquoted-with-parameters"),
    pytest.param("?1", id="boolean"),
])
def test_idempotency_key_items_that_do_not(value):
    with pytest.raises(InvalidMessageIdError):
        parse_idempotency_key(value)


def test_a_parameterised_key_is_the_same_message_as_its_x_message_id(app, engine):
    created = app.post("/echo", b"x", headers={"Idempotency-Key": '"k-1";p=1'})
    assert created.status_int == 201
    assert created.headers["X-Message-URL"] == "/chttp/messages/k-1"
    again = app.post("/echo", b"x", headers={"X-Message-ID": "k-1"})
    assert again.headers["Idempotent-Replayed"] == "true"
    both = app.post("/echo", b"x", headers={"X-Message-ID": "k-1",
                                            "Idempotency-Key": '"k-1";q=?1'})
    assert both.headers["Idempotent-Replayed"] == "true"
    assert count_writes(engine) == 1


@pytest.mark.parametrize("value", [":YWJj:", '("k")', '"a", "b"'])
def test_non_string_items_are_400_on_the_wire(app, engine, value):
    problem(app.post("/echo", b"x", headers={"Idempotency-Key": value}, status="*"),
            400, "invalid-message-id")
    assert stored(engine) == 0 and count_writes(engine) == 0


# -- scopes wider than the column (item 3) -----------------------------------------------


LONG = "u" * 300


@pytest.mark.parametrize("principal", [
    pytest.param("", id="anonymous"),
    pytest.param("alice", id="short"),
    pytest.param("a" * MAX_SCOPE_LENGTH, id="exactly-the-column"),
    pytest.param("a" * (MAX_SCOPE_LENGTH + 1), id="one-over"),
    pytest.param(LONG, id="long"),
    pytest.param("nul\x00inside", id="nul"),
    pytest.param("\ud800lone-surrogate", id="surrogate"),
    pytest.param("x~sha256-" + "0" * 64, id="looks-like-a-digest"),
])
def test_scope_key_fits_the_column_and_is_stable(principal):
    key = scope_key(principal)
    assert len(key) <= MAX_SCOPE_LENGTH
    assert "\x00" not in key
    key.encode("utf-8")  # no lone surrogate: every database can hold it
    assert scope_key(principal) == key
    kept = len(principal) <= MAX_SCOPE_LENGTH and principal.isprintable() and "~sha256-" not in principal
    assert (key == principal) == kept


def test_long_principals_that_share_a_prefix_get_different_scopes():
    first, second = LONG + "-first", LONG + "-second"
    assert scope_key(first) != scope_key(second)
    # A principal spelled like another's digest form is digested itself: no collision.
    assert scope_key(scope_key(first)) != scope_key(first)


@pytest.fixture
def fitted_app(engine):
    """The default scope: the middleware itself makes every principal fit (scope_key)."""
    return webtest.TestApp(CertifiedMiddleware(Root(), engine=engine))


def test_a_long_principal_is_served_and_isolated_on_every_backend(fitted_app, engine):
    first, second = LONG + "-first", LONG + "-second"
    created = fitted_app.post("/echo", b"x", headers={"X-Message-ID": "wide-1"},
                              extra_environ={"REMOTE_USER": first})
    assert created.status_int == 201
    replay = fitted_app.post("/echo", b"x", headers={"X-Message-ID": "wide-1"},
                             extra_environ={"REMOTE_USER": first})
    assert replay.headers["Idempotent-Replayed"] == "true"
    # Another principal with the same first 255 characters is another id space.
    other = fitted_app.post("/echo", b"other", headers={"X-Message-ID": "wide-1"},
                            extra_environ={"REMOTE_USER": second})
    assert other.status_int == 201 and "Idempotent-Replayed" not in other.headers
    problem(fitted_app.delete("/chttp/messages/wide-1", status="*",
                              extra_environ={"REMOTE_USER": LONG + "-third"}),
            404, "message-not-found")
    assert stored_scopes(engine) == sorted([scope_key(first), scope_key(second)])
    assert count_writes(engine) == 2


def test_the_default_scope_fits_a_long_principal_on_every_backend(app, engine):
    response = app.post("/echo", b"x", headers={"X-Message-ID": "wide-default"},
                        extra_environ={"REMOTE_USER": LONG}, status="*")
    assert response.status_int == 201
    assert stored_scopes(engine) == [scope_key(LONG)]


# -- the same dates in the sender's hands ---------------------------------------------------


@pytest.mark.parametrize("raw", OVERFLOWING_DATES)
def test_an_overflowing_retry_after_date_is_ignored_by_the_sender(raw):
    """The sender reads Retry-After with the same parser: an overflowing date must mean
    "no usable Retry-After" (ordinary backoff), not an OverflowError out of a send."""
    import httpx

    from chttp_client.sending import retry_after_of

    response = httpx.Response(503, headers={"Retry-After": raw})
    assert retry_after_of(response, datetime.now(timezone.utc)) is None
