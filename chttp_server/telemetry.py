"""The receiver's metrics and spans (OpenTelemetry, optional; :mod:`chttp_core.telemetry`).

Every front end (the WSGI middleware, so the Flask extension too, and the Django
middleware) wraps one certified request in :func:`observe_message` and hands the
observation to its :class:`~chttp_server.transaction.MessageTransaction`; the transaction
reports the claim, the handler's run, the stored response and the outcome. So the
outcome taxonomy lives here once, read off what the protocol decided
(:class:`~chttp_server.decisions.Outcome`, a replay, or the
:class:`~chttp_server.errors.ProtocolError` raised), never re-derived per front end.

Metrics (instrumentation scope ``certified-http``):

``chttp.server.messages`` (counter, ``{message}``), attribute ``chttp.outcome``:
    ``processed`` (stored and committed), ``replayed`` (answered from the store),
    ``rolled_back`` (5xx / 429: nothing kept), ``reused`` (422), ``in_progress`` (409),
    ``gone`` (410), ``too_old`` (412), ``request_too_large`` (413),
    ``response_too_large`` (500), ``store_unavailable`` (503), ``invalid`` (another
    4xx refusal, e.g. a malformed first-sent date) and ``error`` (the handler raised).
``chttp.server.claim.duration`` (histogram, s): how long the claim took, waits on a
    concurrent claimer of the same id included (docs/protocol.rst §2).
``chttp.server.handler.duration`` (histogram, s): the handler's run.
``chttp.server.response.size`` (histogram, By): the bodies of stored responses.

Spans: ``chttp.receive`` (the message; the parent taken from the request's
``traceparent``, or the span an outer instrumentation already started) with children
``chttp.claim``, ``chttp.handler`` (current while the handler runs, so its own certified
sends continue the trace) and ``chttp.store``. Attributes: ``chttp.message_id``,
``http.request.method``, ``url.path``, ``chttp.outcome``,
``http.response.status_code``, ``chttp.response.size`` — never the scope (a principal)
and never a body.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from chttp_core import telemetry
from chttp_core.telemetry import NOOP, NoOp
from chttp_server.errors import (
    MessageGone,
    MessageIdReused,
    MessageInProgress,
    MessageTooOld,
    ProtocolError,
    RequestTooLarge,
    ResponseTooLarge,
    StoreUnavailable,
)

__all__ = [
    "PROCESSED",
    "REPLAYED",
    "ROLLED_BACK",
    "ERROR",
    "MessageObservation",
    "observe_message",
    "outcome_of_error",
]

PROCESSED = "processed"
REPLAYED = "replayed"
ROLLED_BACK = "rolled_back"
ERROR = "error"

#: The refusals of docs/protocol.rst §4 by outcome; any other ProtocolError is "invalid".
_REFUSALS: tuple[tuple[type[ProtocolError], str], ...] = (
    (MessageIdReused, "reused"),
    (MessageInProgress, "in_progress"),
    (MessageGone, "gone"),
    (MessageTooOld, "too_old"),
    (RequestTooLarge, "request_too_large"),
    (ResponseTooLarge, "response_too_large"),
    (StoreUnavailable, "store_unavailable"),
)


def outcome_of_error(error: BaseException) -> str:
    """The ``chttp.outcome`` of a request that ended with ``error``."""
    if isinstance(error, ProtocolError):
        for cls, outcome in _REFUSALS:
            if isinstance(error, cls):
                return outcome
        return "invalid"
    return ERROR


class _Instruments:
    """The receiver's instruments, made once from the library's meter."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self.messages = meter.create_counter(
            "chttp.server.messages", unit="{message}",
            description="Certified requests by outcome")
        self.claim = meter.create_histogram(
            "chttp.server.claim.duration", unit="s",
            description="Claiming a message id, waits on a concurrent claimer included")
        self.handler = meter.create_histogram(
            "chttp.server.handler.duration", unit="s", description="The handler's run")
        self.stored_bytes = meter.create_histogram(
            "chttp.server.response.size", unit="By", description="Bodies of stored responses")


_INSTRUMENTS = telemetry.InstrumentCache(_Instruments)


def _instruments_for(meter: Any) -> _Instruments | None:
    return _INSTRUMENTS.get(meter)


def observe_message(environ: dict[str, Any], message_id: str) -> MessageObservation | NoOp:
    """An observation of the certified request ``environ`` carries (or ``request.META``).

    The shared no-op while OpenTelemetry is absent or unconfigured.
    """
    if telemetry.unconfigured():
        return NOOP
    tracer = telemetry.tracing()
    meter = telemetry.metering()
    if tracer is None and meter is None:  # configure(None) ran meanwhile
        return NOOP
    return MessageObservation(tracer, _instruments_for(meter), environ, message_id)


class MessageObservation:
    """One certified request's span and measurements (see the module docstring).

    A context manager around the whole request; :meth:`claim`, :meth:`handler` and
    :meth:`store` time the phases, :meth:`finish` names the outcome when the request
    ends without an error.
    """

    def __init__(self, tracer: Any, instruments: _Instruments | None,
                 environ: dict[str, Any], message_id: str) -> None:
        self._tracer = tracer
        self._instruments = instruments
        self._environ = environ
        self.message_id = message_id
        self.outcome: str | None = None
        self.status: int | None = None
        self._span: Any = None
        self._token: Any = None

    def __enter__(self) -> MessageObservation:
        if self._tracer is not None:
            otel = telemetry.api()
            assert otel is not None
            outer = otel.trace.get_current_span().get_span_context().is_valid
            parent = telemetry.extract_from_environ(self._environ)
            self._span = self._tracer.start_span(
                "chttp.receive", context=parent,
                kind=otel.trace.SpanKind.INTERNAL if outer else otel.trace.SpanKind.SERVER,
                attributes={
                    "chttp.message_id": self.message_id,
                    "http.request.method": str(self._environ.get("REQUEST_METHOD", "")),
                    "url.path": str(self._environ.get("PATH_INFO", "")),
                },
            )
            self._token = otel.context.attach(otel.trace.set_span_in_context(self._span, parent))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        outcome = self.outcome
        status = self.status
        if outcome is None:
            outcome = outcome_of_error(exc) if exc is not None else ERROR
            if isinstance(exc, ProtocolError):
                status = exc.code
        if self._instruments is not None:
            self._instruments.messages.add(1, {"chttp.outcome": outcome})
        if self._span is not None:
            otel = telemetry.api()
            assert otel is not None
            self._span.set_attribute("chttp.outcome", outcome)
            if status is not None:
                self._span.set_attribute("http.response.status_code", status)
            if outcome == ERROR and exc is not None:
                self._span.record_exception(exc)
                self._span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, type(exc).__name__))
            elif status is not None and status >= 500:
                self._span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR))
            otel.context.detach(self._token)
            self._span.end()

    def finish(self, outcome: str, status: int | None = None) -> None:
        """The request ended as ``outcome`` (``PROCESSED``, ``REPLAYED``, ``ROLLED_BACK``)."""
        self.outcome = outcome
        self.status = status

    def claim(self) -> AbstractContextManager[None]:
        """Around the claim of the message's key."""
        histogram = self._instruments.claim if self._instruments is not None else None
        return _Phase(self._tracer, "chttp.claim", histogram)

    def handler(self, inner: AbstractContextManager[None]) -> AbstractContextManager[None]:
        """Around the handler's run, entering ``inner`` (the store-error guard) inside it."""
        histogram = self._instruments.handler if self._instruments is not None else None
        return _Phase(self._tracer, "chttp.handler", histogram, inner)

    def store(self, size: int) -> AbstractContextManager[None]:
        """Around storing a response of ``size`` bytes and committing."""
        histogram = self._instruments.stored_bytes if self._instruments is not None else None
        return _Phase(self._tracer, "chttp.store", None, size=size, size_histogram=histogram)


class _Phase:
    """A child span, current while the phase runs, and the phase's duration (or size)."""

    __slots__ = ("_tracer", "_name", "_histogram", "_inner", "_size", "_size_histogram",
                 "_span", "_token", "_started")

    def __init__(self, tracer: Any, name: str, histogram: Any,
                 inner: AbstractContextManager[None] | None = None, *,
                 size: int | None = None, size_histogram: Any = None) -> None:
        self._tracer = tracer
        self._name = name
        self._histogram = histogram
        self._inner = inner
        self._size = size
        self._size_histogram = size_histogram
        self._span: Any = None
        self._token: Any = None
        self._started = 0.0

    def __enter__(self) -> None:
        if self._tracer is not None:
            otel = telemetry.api()
            assert otel is not None
            attributes = {} if self._size is None else {"chttp.response.size": self._size}
            self._span = self._tracer.start_span(self._name, attributes=attributes)
            self._token = otel.context.attach(otel.trace.set_span_in_context(self._span))
        self._started = time.perf_counter()
        if self._inner is not None:
            self._inner.__enter__()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if self._inner is not None:
                self._inner.__exit__(exc_type, exc, traceback)
        except BaseException as translated:  # the guard turned a lost store into a 503
            self._end(translated)
            raise
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        if self._histogram is not None:
            self._histogram.record(time.perf_counter() - self._started)
        if self._size_histogram is not None and exc is None and self._size is not None:
            self._size_histogram.record(self._size)
        if self._span is not None:
            otel = telemetry.api()
            assert otel is not None
            if exc is not None:
                self._span.set_attribute("chttp.outcome", outcome_of_error(exc))
                if not isinstance(exc, ProtocolError):
                    self._span.record_exception(exc)
                    self._span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR,
                                                            type(exc).__name__))
            otel.context.detach(self._token)
            self._span.end()
