"""The formats written by hand for speed match what they replaced, for every input.

``format_http_date`` (``X-Message-Expires``, on every certified answer) is formatted
directly rather than through ``email.utils.format_datetime``; ``fingerprint`` hashes
its length-prefixed parts in one update; ``headers_json`` writes a stored response's
headers as ``json.dumps`` would. A fingerprint drifting would break retries across an
upgrade (a stored fingerprint that no longer matches its retry is a 422,
docs/protocol.rst §1).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from hypothesis import given
from hypothesis import strategies as st

from chttp_core.wire import fingerprint, format_http_date
from chttp_server.messages import headers_json

_ZONES = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes)))
_MOMENTS = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                        timezones=_ZONES)


@given(_MOMENTS)
def test_http_date_is_the_standard_librarys_imf_fixdate(moment: datetime) -> None:
    assert format_http_date(moment) == format_datetime(moment.astimezone(timezone.utc),
                                                       usegmt=True)


def _fingerprint_one_update_per_part(method: str, path: str, query: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.upper().encode("ascii"), path.encode("utf-8", "surrogateescape"),
                 query.encode("utf-8", "surrogateescape"), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@given(st.sampled_from(["GET", "post", "PUT", "DELETE", "PATCH"]), st.text(), st.text(),
       st.binary())
def test_fingerprint_is_the_length_prefixed_digest(method: str, path: str, query: str,
                                                   body: bytes) -> None:
    assert fingerprint(method, path, query, body) == \
        _fingerprint_one_update_per_part(method, path, query, body)


def test_fingerprint_of_a_known_request_is_unchanged() -> None:
    # Pinned: rows stored by earlier versions carry fingerprints computed this way.
    assert fingerprint("POST", "/items", "a=1", b'{"amount": 1}') == (
        "d8240eaa1b84d0350082f89ce7bc4d65d5bd5a077b91ada7420299626887820b")


_HEADER_TEXT = st.text(max_size=40)


@given(st.lists(st.tuples(_HEADER_TEXT, _HEADER_TEXT), max_size=6))
def test_stored_headers_are_json_dumps_text(headers: list[tuple[str, str]]) -> None:
    assert headers_json(headers) == json.dumps(headers)
    assert [tuple(pair) for pair in json.loads(headers_json(headers))] == headers


def test_stored_headers_of_other_values_are_left_to_json() -> None:
    assert headers_json([("Retry-After", 5)]) == json.dumps([("Retry-After", 5)])  # type: ignore[list-item]
    assert headers_json([("a", "b", "c")]) == json.dumps([("a", "b", "c")])  # type: ignore[list-item]


@given(st.text(max_size=30))
def test_message_url_quotes_as_quote_does(message_id: str) -> None:
    # The fast path skips quote() only for ids it would leave as they are.
    from urllib.parse import quote

    from chttp_server.decisions import message_url

    try:
        expected = quote(message_id, safe="")
    except UnicodeEncodeError:  # a lone surrogate: quote() itself refuses it
        return
    assert message_url("/app", "/chttp/messages/", message_id) == \
        "/app/chttp/messages/" + expected
