"""The protocol's decisions as plain functions (chttp_server.decisions): no I/O at all.

Every front end calls these instead of re-implementing the rules, so they are checked
here directly, with values and no database, server or WSGI environ.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from chttp_server import decisions
from chttp_server.errors import (
    InvalidFirstSent,
    InvalidMessageId,
    MessageAcknowledged,
    MessageExpired,
    MessageIdReused,
    MessageTooOld,
    RequestTooLarge,
    ResponseTooLarge,
)
from chttp_server.store import MessageKey, StoredMessage

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc)


def stored(state: str = "completed", fingerprint: str = "f1", expires: timedelta = timedelta(days=1)):
    return StoredMessage(
        key=MessageKey("alice", "m1"), fingerprint=fingerprint, state=state, status=201,
        headers=[("Content-Type", "text/plain")], body=b"ok",
        received_at=NOW - timedelta(hours=1), expires_at=NOW + expires,
    )


def test_message_id_headers():
    assert decisions.parse_message_id(None, None) is None
    assert decisions.parse_message_id(" abc ", '"abc"') == "abc"
    assert decisions.parse_message_id(None, "abc") == "abc"
    with pytest.raises(InvalidMessageId):
        decisions.parse_message_id("abc", '"abd"')
    with pytest.raises(InvalidMessageId):
        decisions.parse_message_id("", None)


def test_first_sent_header():
    assert decisions.parse_first_sent(None) is None
    assert decisions.parse_first_sent("Sat, 10 Jan 2026 12:00:00 GMT") == NOW
    with pytest.raises(InvalidFirstSent):
        decisions.parse_first_sent("yesterday")


def test_incoming_message_fingerprints_method_path_query_and_body():
    one = decisions.incoming_message("POST", "/a", "x=1", b"body", message_id="m1", scope="s")
    assert one.key == MessageKey("s", "m1")
    for other in (("PUT", "/a", "x=1", b"body"), ("POST", "/b", "x=1", b"body"),
                  ("POST", "/a", "x=2", b"body"), ("POST", "/a", "x=1", b"bod")):
        assert decisions.incoming_message(*other, message_id="m1", scope="s").fingerprint \
            != one.fingerprint


def test_request_length_cap():
    decisions.check_request_length(10, 10)
    with pytest.raises(RequestTooLarge):
        decisions.check_request_length(11, 10)


def test_fresh_claim_older_than_the_retention_is_412():
    message = decisions.IncomingMessage("m1", "s", "f", first_sent=NOW - timedelta(days=2))
    decisions.check_fresh_claim(message, NOW, timedelta(days=3))
    with pytest.raises(MessageTooOld):
        decisions.check_fresh_claim(message, NOW, timedelta(days=1))


def test_stored_answer():
    row = stored()
    assert decisions.stored_answer(row, "f1", NOW) is row
    assert decisions.stored_answer(row, None, NOW) is row  # the message resource's GET
    with pytest.raises(MessageIdReused):
        decisions.stored_answer(row, "f2", NOW)
    with pytest.raises(MessageAcknowledged):
        decisions.stored_answer(stored(state="acknowledged"), "f1", NOW)
    with pytest.raises(MessageExpired):
        decisions.stored_answer(stored(expires=timedelta(0)), "f1", NOW)


@pytest.mark.parametrize("status, outcome", [
    (200, decisions.Outcome.STORE), (404, decisions.Outcome.STORE),
    (429, decisions.Outcome.ROLL_BACK), (500, decisions.Outcome.ROLL_BACK),
    (503, decisions.Outcome.ROLL_BACK),
])
def test_outcome_of_the_handlers_status(status, outcome):
    assert decisions.outcome_for(status, too_large=False, limit=10, message_id="m") is outcome


def test_a_response_too_large_to_store_is_500_but_a_5xx_still_rolls_back():
    with pytest.raises(ResponseTooLarge):
        decisions.outcome_for(200, too_large=True, limit=10, message_id="m")
    assert decisions.outcome_for(502, too_large=True, limit=10, message_id="m") \
        is decisions.Outcome.ROLL_BACK


def test_replay_headers():
    url = decisions.message_url("/app", "/chttp/messages/", "a:b")
    assert url == "/app/chttp/messages/a%3Ab"
    headers = decisions.replay_headers(stored(), url)
    assert headers[0] == ("Content-Type", "text/plain")
    assert ("X-Message-URL", url) in headers
    assert headers[-1] == ("Idempotent-Replayed", "true")


def test_a_refusal_renders_without_webob_for_other_front_ends():
    import json

    from chttp_server.errors import StoreUnavailable

    status, headers, body = StoreUnavailable(retry_after=3, message_id="m1").problem()
    assert status == 503
    assert ("Content-Type", "application/problem+json") in headers
    assert ("Retry-After", "3") in headers
    document = json.loads(body)
    assert document["type"] == "store-unavailable"
    assert document["message_id"] == "m1"
    assert "detail" not in document  # the generic title says it all (§4)
