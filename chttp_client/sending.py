"""One certified send on the wire: attempts, retries, backoff and the deadline.

docs/protocol.rst §5: retry on connection errors, timeouts, 5xx other than 501/505, 409
``message-in-progress``, 429 and 503, with exponential backoff and jitter, honouring
``Retry-After``, until the send's deadline (a ``Retry-After`` past it ends the send at
once); anything else is the definitive answer.
One exception to the 5xx rule: §4 marks 500 ``response-too-large`` as *not* retryable
(the receiver rolled back and will roll back again), so it is definitive here.

This module knows nothing about the journal: :mod:`chttp_client.context` records the
request before calling :func:`deliver` and records what it returns. Time and sleep are
injectable so that tests never wait on the wall clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import httpx

from chttp_client import telemetry
from chttp_core.wire import PROBLEM_CONTENT_TYPE, Problem, parse_http_date

__all__ = ["RetryPolicy", "Attempt", "deliver", "is_retryable", "problem_type_of", "retry_after_of"]

#: 501 Not Implemented and 505 HTTP Version Not Supported will not change on a retry.
_NOT_RETRIED_5XX = frozenset({501, 505})


@dataclass(frozen=True)
class RetryPolicy:
    """How a certified send is retried. Every field has the default shown."""

    #: First backoff, in seconds; doubles (``multiplier``) per failed attempt …
    initial_backoff: float = 0.5
    multiplier: float = 2.0
    #: … up to this many seconds between attempts.
    max_backoff: float = 60.0
    #: "Full jitter" (AWS architecture blog): sleep uniformly in [backoff/2, backoff], so
    #: many senders that failed together do not retry together.
    jitter: bool = True
    #: How long a send may keep retrying after it was first sent (docs/protocol.rst §4: well
    #: before the receiver's 15-day retention).
    deadline: timedelta = timedelta(days=1)
    #: Per-attempt network timeout, in seconds.
    timeout: float = 30.0

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        delay = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(64, max(0, failures - 1)))
        if self.jitter:
            delay = (rng or random).uniform(delay / 2, delay)
        return delay


def problem_type_of(response: httpx.Response) -> str | None:
    """The RFC 9457 ``type`` of a problem+json answer, else ``None``."""
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != PROBLEM_CONTENT_TYPE:
        return None
    try:
        document = response.json()
    except ValueError:
        return None
    kind = document.get("type") if isinstance(document, dict) else None
    return str(kind) if kind is not None else None


def retry_after_of(response: httpx.Response, now: datetime) -> float | None:
    """``Retry-After`` in seconds (RFC 9110 §10.2.3: delay-seconds or an HTTP-date)."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        return max(0.0, (parse_http_date(raw) - now).total_seconds())
    except ValueError:
        return None


def is_retryable(response: httpx.Response) -> bool:
    """True if ``response`` is not the definitive answer (see the module docstring)."""
    status = response.status_code
    if status in (429, 503):
        return True
    if status == 409:
        return (problem_type_of(response) or "").endswith(Problem.MESSAGE_IN_PROGRESS)
    if status >= 500 and status not in _NOT_RETRIED_5XX:
        return not (problem_type_of(response) or "").endswith(Problem.RESPONSE_TOO_LARGE)
    return False


@dataclass
class Attempt:
    """What :func:`deliver` ended with: a definitive response, or the deadline."""

    response: httpx.Response | None
    attempts: int
    last_error: str = ""


def deliver(
    client: httpx.Client,
    build: Callable[[], httpx.Request],
    *,
    deadline_at: datetime,
    policy: RetryPolicy,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None],
    on_attempt: Callable[[httpx.Request], None] | None = None,
    on_wait: Callable[[], None] | None = None,
) -> Attempt:
    """Send ``build()`` until a definitive answer or ``deadline_at``; never raises for HTTP.

    The body is read whole, so the response can be recorded byte for byte.
    """
    attempts = 0
    failures = 0
    last_error = ""
    while True:
        if clock() >= deadline_at:
            return Attempt(None, attempts, last_error or "the deadline passed before an attempt")
        request = build()
        if on_attempt is not None:
            on_attempt(request)
        attempts += 1
        telemetry.attempted()
        wait: float | None = None
        try:
            response = client.send(request)
            response.read()
        except httpx.TransportError as exc:  # connection errors and timeouts
            last_error = f"{type(exc).__name__}: {exc}"
            telemetry.retried(telemetry.retry_cause(None, exc))
        else:
            if not is_retryable(response):
                return Attempt(response, attempts)
            last_error = f"HTTP {response.status_code}"
            wait = retry_after_of(response, clock())
            telemetry.retried(telemetry.retry_cause(response, None))
        failures += 1
        delay = policy.backoff(failures)
        if wait is not None:
            delay = max(delay, wait)
        remaining = (deadline_at - clock()).total_seconds()
        if remaining <= 0:
            return Attempt(None, attempts, last_error)
        if wait is not None and wait > remaining:
            # The receiver asked us to come back after the deadline: sleeping until the
            # deadline would only postpone the same end.
            return Attempt(None, attempts, f"{last_error} with Retry-After {wait:g} s, past the "
                                           f"deadline ({remaining:g} s left), so not waited for")
        if on_wait is not None:
            on_wait()
        sleep(min(delay, remaining))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


