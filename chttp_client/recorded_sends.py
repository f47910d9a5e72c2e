"""A certified send as a record: the request kept before it leaves, the answer after.

The journal stores a send's request (method, URL, the caller's headers, body) in the
step's intent commit and its definitive answer when it arrives
(:mod:`chttp_client.context`); a replay rebuilds the very same
:class:`httpx.Response` from the record and raises what it meant. These functions are
that translation, with no journal and no I/O.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urljoin

import httpx

from chttp_client import codec, telemetry
from chttp_client.errors import (DeadlineExceeded, ProtocolAnswerError, RunDeadlineExceeded, SendError,
                                 UnhealableSendError, protocol_error_for)
from chttp_client.records import StepRecord
from chttp_client.effects import Steps
from chttp_client.sending import RetryPolicy, deliver_steps, problem_type_of
from chttp_core.schema import STEP_DONE
from chttp_core.telemetry import TRACE_HEADERS, trace_headers
from chttp_core.wire import HEADER_FIRST_SENT, HEADER_MESSAGE_ID, HEADER_MESSAGE_URL, format_http_date

__all__ = [
    "SendOptions",
    "caller_headers",
    "request_record",
    "response_record",
    "message_url_of",
    "rebuild_response",
    "answer_recorded_send",
]

#: What each reason of an UnhealableSendError means, for its message.
_UNHEALABLE = {
    "unsupported-scheme": "the URL's scheme is not http:// or https://",
    "tls": "the TLS handshake failed (https:// spoken to a plain-HTTP port?)",
    "certificate": "the server's TLS certificate did not verify",
}

#: Response headers not kept: the body is stored decoded, so these would lie about it.
_DROPPED_RESPONSE_HEADERS = frozenset({"content-encoding", "transfer-encoding", "content-length"})
#: Request headers httpx adds by itself, and the W3C trace context the library adds to
#: each attempt (chttp_core.telemetry): the recorded request keeps only the caller's, so
#: a resumed send under another trace still matches its record (docs/protocol.rst §5.5).
_AUTOMATIC_REQUEST_HEADERS = frozenset(
    {"host", "content-length", "accept", "accept-encoding", "connection", "user-agent"}
) | TRACE_HEADERS


@dataclass(frozen=True)
class SendOptions:
    """What a certified send was asked for (``send(method, url, …)``)."""

    json: Any = None
    content: bytes | str | None = None
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None
    #: Seconds after the first attempt to give up; None: the journal's RetryPolicy.deadline.
    deadline: float | None = None


def caller_headers(built: httpx.Request) -> list[list[str]]:
    """The headers the caller gave (and the content type httpx derived from ``json=``).

    As lists, the shape they have after a JSON round trip through the journal, so a
    fresh request and a recorded one compare equal.
    """
    return [[key, value] for key, value in built.headers.multi_items()
            if key.lower() not in _AUTOMATIC_REQUEST_HEADERS]


def request_record(method: str, url: str, built: httpx.Request, body: bytes) -> dict[str, Any]:
    """What a send step stores of its request before the first attempt."""
    return {"method": method, "url": url, "headers": caller_headers(built), "body": codec.encode(body)}


def response_record(response: httpx.Response) -> dict[str, Any]:
    """What a send step stores of its definitive answer (the body as read, decoded)."""
    return {
        "status": response.status_code,
        "headers": [[k, v] for k, v in response.headers.multi_items()
                    if k.lower() not in _DROPPED_RESPONSE_HEADERS],
        "body": codec.encode(response.content),
    }


def message_url_of(response: httpx.Response, request_url: str) -> str | None:
    """The absolute ``X-Message-URL`` to acknowledge (docs/protocol.rst §3), if the answer gave one."""
    location = response.headers.get(HEADER_MESSAGE_URL)
    return urljoin(request_url, location) if location else None


def rebuild_response(message_id: str, request: dict[str, Any], stored: dict[str, Any]) -> httpx.Response:
    """The recorded answer as an :class:`httpx.Response`, or the protocol error it meant.

    Identical on a first run and on every replay: a §4 protocol answer raises its
    :class:`~chttp_client.errors.ProtocolAnswerError` subclass carrying the response.
    """
    response = httpx.Response(
        stored["status"],
        headers=[(str(pair[0]), str(pair[1])) for pair in stored["headers"]],
        content=codec.decode(stored["body"]),
        request=httpx.Request(request.get("method", "GET"), request.get("url", "http://invalid/")),
    )
    problem = problem_type_of(response)
    error_class = protocol_error_for(response.status_code, problem)
    if error_class is None:
        return response
    detail = ""
    try:
        document = response.json()
        detail = str(document.get("detail") or document.get("title") or "")
    except (ValueError, AttributeError):
        pass
    error: ProtocolAnswerError = error_class(
        message_id, request.get("method", ""), request.get("url", ""),
        f"{response.status_code} {problem}: {detail}".rstrip(": "), problem or "",
    )
    error.response = response
    raise error


def answer_recorded_send(
    record: StepRecord,
    *,
    # Builds each attempt (the run's own client: its base headers, auth and timeouts).
    client: httpx.Client | httpx.AsyncClient,
    policy: RetryPolicy,
    clock: Callable[[], datetime],
    # Seconds after the first attempt to give up; None: policy.deadline.
    deadline: float | None,
    # How long this run waits (receiver handlers); None: only the send's deadline.
    run_deadline: timedelta | None,
    on_attempt: Callable[[], None],
    on_answer: Callable[[], None],
    on_wait: Callable[[], Steps[None]],
    # Records attempt n in the journal before it leaves (raises to stop the send); None: not counted.
    count_attempt: Callable[[int], Steps[None]] | None = None,
    # The first attempt was already counted (by the step's intent commit).
    prepaid: bool = False,
) -> Steps[None]:
    """Send the recorded request until its definitive answer; record it in ``record``.

    Step logic (:mod:`chttp_client.effects`): a sync and an async run drive the same code.

    Every attempt carries the recorded id and first-sent time (docs/protocol.rst §1). The
    answer, or the :class:`~chttp_client.errors.DeadlineExceeded` of the send's own
    deadline, is written into ``record`` (now ``done``). When only ``run_deadline``
    passed, raises :class:`~chttp_client.errors.RunDeadlineExceeded` and leaves ``record`` as it was, so the
    next run resends the same message. ``record.attempts`` counts the attempts of every
    run (``count_attempt``), so the deadline's error reports them all.
    """
    request = record.request or {}
    body = codec.decode(request.get("body"))
    assert record.message_id is not None and record.first_sent_at is not None
    first_sent = record.first_sent_at
    if first_sent.tzinfo is None:
        first_sent = first_sent.replace(tzinfo=timezone.utc)
    headers = [(str(pair[0]), str(pair[1])) for pair in request.get("headers", [])] + [
        (HEADER_MESSAGE_ID, record.message_id),
        (HEADER_FIRST_SENT, format_http_date(first_sent)),
    ]
    limit = policy.deadline if deadline is None else timedelta(seconds=deadline)

    def build() -> httpx.Request:
        # Each attempt carries the current span's traceparent (none when tracing is off).
        return client.build_request(request["method"], request["url"], content=body,
                                    headers=headers + trace_headers(), timeout=policy.timeout)

    tries = 0

    def before_attempt() -> Steps[None]:
        nonlocal tries
        tries += 1
        if count_attempt is not None and not (prepaid and tries == 1):
            yield from count_attempt(record.attempts + 1)
            record.attempts += 1

    deadline_at = first_sent + limit
    run_deadline_at = None if run_deadline is None else clock() + run_deadline
    attempt = yield from deliver_steps(
        build,
        deadline_at=deadline_at if run_deadline_at is None else min(deadline_at, run_deadline_at),
        policy=policy, clock=clock, before_attempt=before_attempt,
        on_attempt=lambda _request: on_attempt(), on_wait=on_wait,
        attempts_before=record.attempts - 1 if prepaid else record.attempts,
    )
    total = record.attempts if count_attempt is not None else attempt.attempts
    made = f"{total} attempt(s)"
    if total != attempt.attempts:
        made += f", {attempt.attempts} of them in this process"
    if attempt.unhealable is not None:
        # No retry can heal it (chttp_client.sending.unhealable): final now, not in a day.
        error: SendError = UnhealableSendError(
            record.message_id, request["method"], request["url"],
            f"{_UNHEALABLE[attempt.unhealable]}, so it is not retried ({made}): "
            f"{attempt.last_error}", attempt.unhealable, total)
        record.outcome = {"error": codec.exception_record(error)}
    elif attempt.response is None and run_deadline_at is not None and clock() < deadline_at:
        # Only this run gave up: the step stays "recorded" and the next run (a retry
        # of the incoming message) resends it under the same id.
        telemetry.deadline_exceeded("run")
        raise RunDeadlineExceeded(
            record.message_id, request["method"], request["url"],
            f"no definitive answer within this run's {run_deadline} "
            f"({made}; last: {attempt.last_error}); not recorded: "
            "the next run resends the same message", total,
        )
    elif attempt.response is None:
        telemetry.deadline_exceeded("send")
        error = DeadlineExceeded(
            record.message_id, request["method"], request["url"],
            f"no definitive answer after {made} within {limit}; last: {attempt.last_error}", total,
        )
        record.outcome = {"error": codec.exception_record(error)}
    else:
        on_answer()
        record.response = response_record(attempt.response)
        record.message_url = message_url_of(attempt.response, request["url"])
    record.state = STEP_DONE
