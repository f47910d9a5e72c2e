"""One certified send on the wire: attempts, retries, backoff and the deadline.

docs/protocol.rst §5: retry on connection errors, timeouts, 5xx other than 501/505, 409
``message-in-progress``, 429 and 503, with exponential backoff and jitter, honouring
``Retry-After``, until the send's deadline (a ``Retry-After`` past it ends the send at
once); anything else is the definitive answer.
Errors retrying cannot heal end the send at once too (:func:`unhealable`): an
unsupported scheme, a TLS handshake that failed (``https://`` spoken to a plain-HTTP
port) or a certificate that does not verify.
One exception to the 5xx rule: §4 marks 500 ``response-too-large`` as *not* retryable
(the receiver rolled back and will roll back again), so it is definitive here.

This module knows nothing about the journal: :mod:`chttp_client.steps` records the
request before running :func:`deliver_steps` and records what it returns. Time and sleep are
injectable so that tests never wait on the wall clock.

A failing send says so: a WARNING on the ``chttp_client`` logger at its first failed
attempt and then at attempts 2, 4, 8, 16… of this process (so ever more rarely: with
the default policy within the first minute, then after about 8 and 24 minutes, 1, 2,
4, 8 and 17 hours: a dozen in a day), naming method, URL,
attempt, reason, next try and deadline left. Python's last-resort handler prints it
even when the application configured no logging.
"""

from __future__ import annotations

import logging
import random
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import httpx

from chttp_client import telemetry
from chttp_client.effects import Http, Sleep, Steps, SyncExecutor
from chttp_core.wire import HEADER_MESSAGE_ID, PROBLEM_CONTENT_TYPE, Problem, parse_http_date

__all__ = ["RetryPolicy", "Attempt", "deliver", "deliver_steps", "is_retryable", "problem_type_of",
           "retry_after_of", "unhealable"]

log = logging.getLogger("chttp_client")

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
    #: before the receiver's 15-day retention). Not bounded by the journal's short lease:
    #: a live run's heartbeat renews it through every attempt and backoff sleep.
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


def unhealable(error: httpx.TransportError) -> str | None:
    """Why retrying cannot heal ``error`` (``"unsupported-scheme"``, ``"certificate"``,
    ``"tls"``), or ``None`` for a transport error worth retrying.

    httpx reports an unknown or missing scheme as :class:`httpx.UnsupportedProtocol`,
    and a failed TLS handshake as a :class:`httpx.ConnectError` caused by an
    :class:`ssl.SSLError` (``WRONG_VERSION_NUMBER`` when ``https://`` meets a plain-HTTP
    port; :class:`ssl.SSLCertVerificationError` for a certificate). Neither changes
    on a retry: the URL or the TLS setup must be fixed.
    """
    if isinstance(error, httpx.UnsupportedProtocol):
        return "unsupported-scheme"
    cause: BaseException | None = error
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "certificate"
        if isinstance(cause, ssl.SSLError):
            return "tls"
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return None


@dataclass
class Attempt:
    """What :func:`deliver` ended with: a definitive response, the deadline, or an
    error retrying cannot heal (``unhealable`` names it, :func:`unhealable`)."""

    response: httpx.Response | None
    attempts: int
    last_error: str = ""
    unhealable: str | None = None


def _warn_failed(request: httpx.Request, attempt: int, reason: str, delay: float,
                 remaining: float) -> None:
    """The WARNING of a failed attempt (module docstring: which attempts are logged)."""
    message_id = request.headers.get(HEADER_MESSAGE_ID, "?")
    log.warning("chttp: %s %s (message %s) attempt %d failed: %s; next try in %.3g s, "
                "%s left before the send's deadline",
                request.method, request.url, message_id, attempt, reason, delay,
                timedelta(seconds=int(remaining)))


def deliver_steps(
    build: Callable[[], httpx.Request],
    *,
    deadline_at: datetime,
    policy: RetryPolicy,
    clock: Callable[[], datetime],
    on_attempt: Callable[[httpx.Request], None] | None = None,
    on_wait: Callable[[], Steps[None]] | None = None,
    # Step logic run before each attempt leaves (the journal counts it; may raise to stop).
    before_attempt: Callable[[], Steps[None]] | None = None,
    # Attempts of this send made before this call (earlier runs): the logged numbers go on.
    attempts_before: int = 0,
) -> Steps[Attempt]:
    """Send ``build()`` until a definitive answer or ``deadline_at``; never raises for HTTP.

    The retry rules as step logic (:mod:`chttp_client.effects`): each attempt is an
    :class:`~chttp_client.effects.Http` effect, each wait a
    :class:`~chttp_client.effects.Sleep`, so a sync and an async sender retry alike.
    The body is read whole, so the response can be recorded byte for byte.
    """
    attempts = 0
    failures = 0
    last_error = ""
    while True:
        if clock() >= deadline_at:
            return Attempt(None, attempts, last_error or "the deadline passed before an attempt")
        request = build()
        if before_attempt is not None:
            yield from before_attempt()
        if on_attempt is not None:
            on_attempt(request)
        attempts += 1
        telemetry.attempted()
        wait: float | None = None
        try:
            response: httpx.Response = yield Http(request)
        except httpx.TransportError as exc:  # connection errors and timeouts
            last_error = f"{type(exc).__name__}: {exc}"
            kind = unhealable(exc)
            if kind is not None:
                return Attempt(None, attempts, last_error, unhealable=kind)
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
        if failures & (failures - 1) == 0:  # 1, 2, 4, 8…: ever more rarely
            _warn_failed(request, attempts_before + attempts, last_error, min(delay, remaining),
                         remaining)
        if on_wait is not None:
            yield from on_wait()
        yield Sleep(min(delay, remaining))


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
    """:func:`deliver_steps` with a synchronous client, in the calling thread."""

    def waited() -> Steps[None]:
        if on_wait is not None:
            on_wait()
        return
        yield  # a generator with no effects of its own

    return SyncExecutor(client, sleep).run(deliver_steps(
        build, deadline_at=deadline_at, policy=policy, clock=clock, on_attempt=on_attempt,
        on_wait=waited))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


