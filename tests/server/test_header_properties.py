"""Property-based tests over every request header the receiver reads (issue 11).

Hypothesis generates the values an attacker could send — message ids, ``Idempotency-Key``
items, ``X-Message-First-Sent`` dates, principals — and each example is checked on
SQLite and PostgreSQL for the receiver's promises (docs/protocol.rst §1, §4):

* never a 5xx and never an exception escaping the middleware (a traceback);
* every 4xx is ``application/problem+json`` whose ``status`` matches (the application
  under test only ever answers 201, so any 4xx is the protocol's);
* a refused request leaves the store's rows and the host's rows exactly as they were;
  an accepted one adds at most one message.

Values WebTest's lint accepts go through WebTest; the rest (bytes outside ASCII, control
characters) are handed to the middleware as raw WSGI environs, exactly as a lax server
would. The framing headers (``Content-Length``, ``Transfer-Encoding``) only mean
something to a real server, so they are sent as raw bytes to waitress on loopback
(``test_framing_properties.py``). Examples are bounded so the suite stays fast.
"""

from __future__ import annotations

import io
import json
import re
import string
import uuid
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import webob
import webtest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from chttp_core.schema import messages
from chttp_core.wire import MAX_SCOPE_LENGTH, scope_key
from chttp_server import CertifiedMiddleware

from .apps import Root, host_writes

EXAMPLES = 200

bounded = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # One database per test, shared by its examples: each example compares the store
    # before and after itself, so earlier examples' rows do not matter.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies ----------------------------------------------------------------------------

ID_ALPHABET = string.ascii_letters + string.digits + "-._~:"
#: What a lax server could put in an environ value: PEP 3333 "native strings" (latin-1).
LATIN_1 = st.characters(min_codepoint=0, max_codepoint=255)
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)

plausible_ids = st.text(ID_ALPHABET, min_size=0, max_size=130)
valid_ids = st.text(ID_ALPHABET, min_size=1, max_size=128).filter(lambda v: v not in (".", ".."))
#: Valid ids weigh three times as much as broken ones, so that storing is exercised too.
message_ids = st.one_of(
    valid_ids, valid_ids, valid_ids,
    plausible_ids,
    st.sampled_from([".", "..", "...", " ", "", " a ", "a" * 128, "a" * 129]),
    st.text(PRINTABLE, max_size=40),
)
sf_parameters = st.lists(
    st.tuples(st.text("abcdefghijklmnopqrstuvwxyz0123456789_-.*ABC", min_size=0, max_size=5),
              st.one_of(st.none(), st.integers(-10**16, 10**16).map(str),
                        st.sampled_from(["?0", "?1", ":YWJj:", '"x"', "tok/en", "1.5", "(1)", ""]))),
    max_size=3,
).map(lambda pairs: "".join(f";{key}" + (f"={value}" if value is not None else "")
                            for key, value in pairs))
idempotency_keys = st.one_of(
    st.builds(lambda key, params: f'"{key}"{params}', message_ids, sf_parameters),
    message_ids,
    st.builds(lambda key: f":{key}:", plausible_ids),
    st.builds(lambda a, b: f'"{a}", "{b}"', plausible_ids, plausible_ids),
    st.builds(lambda a: f'("{a}")', plausible_ids),
    st.text(PRINTABLE, max_size=40),
)

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Xyz", ""]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
          "Dec", "Foo", ""]
date_parts = st.builds(
    lambda weekday, day, month, year, hour, minute, second, zone:
        f"{weekday}, {day:02d} {month} {year} {hour:02d}:{minute:02d}:{second:02d} {zone}",
    st.sampled_from(WEEKDAYS), st.integers(0, 99), st.sampled_from(MONTHS),
    st.one_of(st.integers(0, 10000), st.integers(0, 10**25)),
    st.integers(0, 99), st.integers(0, 99), st.integers(0, 99),
    st.one_of(st.sampled_from(["GMT", "UTC", "Z", "EST", "", "+", "-"]),
              st.integers(-9999, 9999).map(lambda n: f"{n:+05d}"),
              st.integers(-10**20, 10**20).map(lambda n: f"{n:+d}")),
)
#: Every representable date at the offsets furthest from UTC: at the ends of datetime's
#: range, moving one to UTC overflows (Fri, 31 Dec 9999 23:59:59 -1200 is year 10000).
real_dates = st.datetimes(
    min_value=datetime.min, max_value=datetime.max,
    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-12)),
                               timezone(timedelta(hours=14)),
                               timezone(-timedelta(hours=23, minutes=59))]),
).map(format_datetime)
first_sent_dates = st.one_of(date_parts, real_dates, st.text(PRINTABLE, max_size=40))


# -- the receiver under test -----------------------------------------------------------------


@pytest.fixture
def middleware(engine):
    """The default scope (REMOTE_USER): the middleware makes it fit (scope_key) itself."""
    return CertifiedMiddleware(Root(), engine=engine)


def store_state(engine) -> tuple[int, int]:
    with engine.connect() as connection:
        stored = connection.execute(select(func.count()).select_from(messages)).scalar_one()
        writes = connection.execute(select(func.count()).select_from(host_writes)).scalar_one()
    return int(stored), int(writes)


def check_answer(status: int, content_type: str | None, body: bytes,
                 before: tuple[int, int], after: tuple[int, int]) -> None:
    event(f"answered {status}")  # the spread of answers, in --hypothesis-show-statistics
    assert status < 500, body[:300]
    assert b"Traceback" not in body
    if status >= 400:
        assert content_type == "application/problem+json", (status, body[:300])
        document = json.loads(body)
        assert document["status"] == status and document["type"]
        assert after == before, "a refused request changed the store"
    else:
        assert status in (200, 201), body[:300]
        assert after[0] - before[0] in (0, 1) and after[1] - before[1] in (0, 1)


def send_raw(middleware, engine, environ_extra: dict[str, str], body: bytes = b"x") -> int:
    """One POST /echo as a hand-made environ; returns its status after checking it."""
    before = store_state(engine)
    request = webob.Request.blank("/echo", method="POST", body=body)
    request.environ.update(environ_extra)
    response = request.get_response(middleware)
    check_answer(response.status_int, response.content_type, response.body, before,
                 store_state(engine))
    return response.status_int


def send_webtest(app, engine, headers: dict[str, str], body: bytes = b"x",
                 extra_environ: dict[str, str] | None = None) -> webtest.TestResponse:
    before = store_state(engine)
    response = app.post("/echo", body, headers=headers, extra_environ=extra_environ or {},
                        status="*")
    check_answer(response.status_int, response.headers.get("Content-Type", "").split(";")[0]
                 or None, response.body, before, store_state(engine))
    return response


# -- properties ------------------------------------------------------------------------------


@st.composite
def id_headers(draw: st.DrawFn) -> dict[str, str]:
    """X-Message-ID, often an Idempotency-Key naming the same id (as a string item, with
    parameters) or another one, and sometimes a first-sent date."""
    message_id = draw(message_ids)
    headers = {"X-Message-ID": message_id}
    key = draw(st.one_of(
        st.none(),
        st.just(f'"{message_id.strip()}"'),
        sf_parameters.map(lambda params: f'"{message_id.strip()}"{params}'),
        idempotency_keys,
    ))
    if key is not None:
        headers["Idempotency-Key"] = key
    first_sent = draw(st.one_of(st.none(), st.none(), real_dates, first_sent_dates))
    if first_sent is not None:
        headers["X-Message-First-Sent"] = first_sent
    return headers


@bounded
@given(headers=id_headers(), body=st.text(max_size=32).map(str.encode))  # echo decodes UTF-8
def test_printable_id_headers_through_webtest(middleware, engine, headers, body):
    response = send_webtest(webtest.TestApp(middleware), engine, headers, body)
    if response.status_int == 201:
        accepted = headers["X-Message-ID"].strip(" \t")
        assert accepted not in (".", "..")  # docs/protocol.rst §1, stated independently
        assert re.fullmatch(r"[A-Za-z0-9\-._~:]{1,128}", accepted)


@bounded
@given(first_sent=first_sent_dates, message_id=st.uuids().map(str))
def test_first_sent_dates_through_webtest(middleware, engine, first_sent, message_id):
    """Any date: 400 invalid-first-sent, 412 message-too-old, or processed (201)."""
    response = send_webtest(webtest.TestApp(middleware), engine,
                            {"X-Message-ID": message_id, "X-Message-First-Sent": first_sent})
    if response.status_int >= 400:
        assert json.loads(response.body)["type"] in ("invalid-first-sent", "message-too-old")


@bounded
@given(key=idempotency_keys, first_sent=st.one_of(st.none(), first_sent_dates))
def test_idempotency_key_alone_through_webtest(middleware, engine, key, first_sent):
    headers = {"Idempotency-Key": key}
    if first_sent is not None:
        headers["X-Message-First-Sent"] = first_sent
    response = send_webtest(webtest.TestApp(middleware), engine, headers)
    if response.status_int == 201:
        url_id = response.headers["X-Message-URL"].rsplit("/", 1)[1]
        assert url_id not in (".", "..")


@bounded
@given(message_id=st.text(LATIN_1, max_size=140),  # with no id the request is not certified
       key=st.one_of(st.none(), st.text(LATIN_1, max_size=140)),
       first_sent=st.one_of(st.none(), st.text(LATIN_1, max_size=60), date_parts))
def test_any_latin_1_header_values_as_a_lax_server_passes_them(middleware, engine,
                                                                message_id, key, first_sent):
    environ = {"HTTP_X_MESSAGE_ID": message_id}
    if key is not None:
        environ["HTTP_IDEMPOTENCY_KEY"] = key
    if first_sent is not None:
        environ["HTTP_X_MESSAGE_FIRST_SENT"] = first_sent
    send_raw(middleware, engine, environ)


@bounded
@given(principal=st.one_of(st.text(LATIN_1, max_size=400),
                           st.text(LATIN_1, min_size=250, max_size=600)))
def test_any_principal_is_served_and_kept_apart(middleware, engine, principal):
    """A scope of any length or content: 201, stored under scope_key(principal), and
    another principal using the same id gets its own message."""
    app = webtest.TestApp(middleware, lint=False)  # lint refuses non-ASCII environ values
    message_id = f"p-{len(principal)}-{abs(hash(principal))}"
    environ = {"REMOTE_USER": principal}
    first = send_webtest(app, engine, {"X-Message-ID": message_id}, extra_environ=environ)
    assert first.status_int == 201
    assert json.loads(first.body)["scope"] == scope_key(principal)
    assert len(scope_key(principal)) <= MAX_SCOPE_LENGTH
    again = send_webtest(app, engine, {"X-Message-ID": message_id}, extra_environ=environ)
    assert again.headers["Idempotent-Replayed"] == "true"
    other = send_webtest(app, engine, {"X-Message-ID": message_id}, b"other",
                         extra_environ={"REMOTE_USER": principal + "+"})
    assert other.status_int == 201 and "Idempotent-Replayed" not in other.headers


@settings(max_examples=2000, deadline=None, database=None)
@given(first=st.text(max_size=600), second=st.text(max_size=600))
def test_scope_key_never_merges_two_principals(first, second):
    """Pure: the mapping fits the column, holds only storable text, and is injective."""
    for principal in (first, second):
        key = scope_key(principal)
        assert len(key) <= MAX_SCOPE_LENGTH and "\x00" not in key
        key.encode("utf-8")
    if first != second:
        assert scope_key(first) != scope_key(second)


@bounded
@given(length=st.one_of(st.none(), st.sampled_from(["", "-5", "ten", " 3", "3 ", "+3", "0x3",
                                                    "99999999999999999999"]),
                        st.integers(0, 40).map(str)),
       terminated=st.booleans(), body=st.text(string.ascii_letters, max_size=30).map(str.encode))
def test_any_content_length_as_a_lax_server_passes_it(middleware, engine, length, terminated, body):
    """CONTENT_LENGTH and wsgi.input_terminated as a server might set them, whatever the
    body really holds (a short body is 400 incomplete-body, never a half-read request)."""
    # A fresh id each time (hypothesis repeats drawn values; a reuse would be a fair 422).
    environ = {"HTTP_X_MESSAGE_ID": str(uuid.uuid4()), "wsgi.input_terminated": terminated}
    request = webob.Request.blank("/echo", method="POST")
    request.environ.update(environ)
    request.environ["wsgi.input"] = io.BytesIO(body)
    if length is None:
        request.environ.pop("CONTENT_LENGTH", None)
    else:
        request.environ["CONTENT_LENGTH"] = length
    before = store_state(engine)
    response = request.get_response(middleware)
    check_answer(response.status_int, response.content_type, response.body, before,
                 store_state(engine))
    if response.status_int >= 400:
        assert json.loads(response.body)["type"] in ("incomplete-body", "request-too-large")
