"""The sender's metrics and spans (OpenTelemetry, optional; :mod:`chttp_core.telemetry`).

The hooks are called from the places where the journal and the context decide things
(a send delivered, an attempt, a retry and its cause, a deadline, a resume, a
non-determinism error, an oplog changing state); each is one call that does nothing
while OpenTelemetry is absent or unconfigured.

Metrics (instrumentation scope ``certified-http``):

``chttp.client.sends`` (counter, ``{send}``), attribute ``chttp.outcome``:
    certified sends that went on the wire, by how they ended: ``answered``,
    ``deadline_exceeded`` (the send's deadline, recorded), ``run_deadline`` (only the
    handler run's bound: not recorded, resent by the next run), ``error``.
``chttp.client.attempts`` (counter, ``{attempt}``): HTTP attempts of those sends.
``chttp.client.retries`` (counter, ``{retry}``), attribute ``chttp.retry.cause``:
    ``connection``, ``timeout`` or ``status_<code>`` (409 in progress, 429, 503, 5xx).
``chttp.client.deadlines_exceeded`` (counter), attribute ``chttp.deadline``:
    ``send`` or ``run``.
``chttp.client.resumes`` (counter): oplogs resumed (``resume`` / ``resume_all``).
``chttp.client.nondeterminism_errors`` (counter): replays that diverged from the record.
``chttp.client.oplogs`` (counter, ``{oplog}``), attribute ``chttp.oplog.state``:
    oplogs entering a state: ``open`` (first written), ``done``, ``failed``,
    ``abandoned``.

Spans: ``chttp.send`` (kind CLIENT) around each certified send that goes on the wire,
with ``chttp.message_id``, ``chttp.oplog_id``, ``chttp.step``, ``chttp.function``,
``http.request.method``, ``server.address``, ``http.response.status_code`` and
``chttp.attempts``; every attempt carries the span's W3C ``traceparent``, which the
receiver continues (:mod:`chttp_server.telemetry`). A resumed send is a new span with
the *same* ``chttp.message_id``. Recorded sends replayed from the journal do not go on
the wire and make no span.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from chttp_client.errors import DeadlineExceeded
from chttp_client.oplog_store import Finish
from chttp_client.records import StepRecord
from chttp_core import telemetry
from chttp_core.schema import OPLOG_OPEN
from chttp_core.telemetry import NOOP, NoOp

__all__ = [
    "SendObservation",
    "observe_send",
    "attempted",
    "retried",
    "retry_cause",
    "deadline_exceeded",
    "resumed",
    "nondeterminism",
    "oplog_state",
    "oplog_committed",
]


class _Instruments:
    """The sender's instruments, made once from the library's meter."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self.sends = meter.create_counter(
            "chttp.client.sends", unit="{send}", description="Certified sends that went on the wire")
        self.attempts = meter.create_counter(
            "chttp.client.attempts", unit="{attempt}", description="HTTP attempts of certified sends")
        self.retries = meter.create_counter(
            "chttp.client.retries", unit="{retry}", description="Retried attempts, by cause")
        self.deadlines = meter.create_counter(
            "chttp.client.deadlines_exceeded", unit="{send}",
            description="Sends whose deadline passed without a definitive answer")
        self.resumes = meter.create_counter(
            "chttp.client.resumes", unit="{oplog}", description="Oplogs resumed")
        self.nondeterminism = meter.create_counter(
            "chttp.client.nondeterminism_errors", unit="{error}",
            description="Replays that diverged from the recorded steps")
        self.oplogs = meter.create_counter(
            "chttp.client.oplogs", unit="{oplog}", description="Oplogs entering a state")


_INSTRUMENTS = telemetry.InstrumentCache(_Instruments)


def _meter_instruments() -> _Instruments | None:
    return _INSTRUMENTS.get(telemetry.metering())


def attempted() -> None:
    """One HTTP attempt of a certified send is about to leave."""
    instruments = _meter_instruments()
    if instruments is not None:
        instruments.attempts.add(1)


def retry_cause(response: httpx.Response | None, error: BaseException | None) -> str:
    """``timeout``, ``connection`` or ``status_<code>``: why an attempt is retried."""
    if response is not None:
        return f"status_{response.status_code}"
    return "timeout" if isinstance(error, httpx.TimeoutException) else "connection"


def retried(cause: str) -> None:
    """An attempt failed and the send will be tried again (docs/protocol.rst §5.2)."""
    instruments = _meter_instruments()
    if instruments is not None:
        instruments.retries.add(1, {"chttp.retry.cause": cause})


def deadline_exceeded(which: str) -> None:
    """A send's deadline (``send``, recorded) or a handler run's bound (``run``) passed."""
    instruments = _meter_instruments()
    if instruments is not None:
        instruments.deadlines.add(1, {"chttp.deadline": which})


def resumed() -> None:
    """An open oplog is being resumed."""
    instruments = _meter_instruments()
    if instruments is not None:
        instruments.resumes.add(1)


def nondeterminism() -> None:
    """A replayed step asked for something else than its record."""
    instruments = _meter_instruments()
    if instruments is not None:
        instruments.nondeterminism.add(1)


def oplog_state(state: str) -> None:
    """An oplog entered ``state`` (``open``, ``done``, ``failed``, ``abandoned``)."""
    instruments = _meter_instruments()
    if instruments is not None:
        instruments.oplogs.add(1, {"chttp.oplog.state": state})


def oplog_committed(*, new: bool, finish: Finish | None) -> None:
    """An oplog's commit went through: its first (``open``) and/or its last (``finish``)."""
    if new:
        oplog_state(OPLOG_OPEN)
    if finish is not None:
        oplog_state(finish.state)


def observe_send(record: StepRecord, *, oplog_id: str, function: str) -> SendObservation | NoOp:
    """The span and count of one certified send going on the wire (no-op when off)."""
    tracer = telemetry.tracing()
    instruments = _meter_instruments()
    if tracer is None and instruments is None:
        return NOOP
    request = record.request or {}
    return SendObservation(tracer, instruments, {
        "chttp.message_id": record.message_id or "",
        "chttp.oplog_id": oplog_id,
        "chttp.step": record.number,
        "chttp.function": function,
        "http.request.method": str(request.get("method", "")),
        "server.address": urlsplit(str(request.get("url", ""))).hostname or "",
    })


class SendObservation:
    """A ``chttp.send`` span, current while the send's attempts leave (they carry it)."""

    def __init__(self, tracer: Any, instruments: _Instruments | None,
                 attributes: dict[str, Any]) -> None:
        self._tracer = tracer
        self._instruments = instruments
        self._attributes = attributes
        self.outcome = "error"
        self.status: int | None = None
        self.attempts = 0
        self._span: Any = None
        self._token: Any = None

    def __enter__(self) -> SendObservation:
        if self._tracer is not None:
            otel = telemetry.api()
            assert otel is not None
            self._span = self._tracer.start_span(
                "chttp.send", kind=otel.trace.SpanKind.CLIENT, attributes=self._attributes)
            self._token = otel.context.attach(otel.trace.set_span_in_context(self._span))
        return self

    def attempt(self) -> None:
        """One more attempt left under this span."""
        self.attempts += 1

    def settled(self, record: StepRecord) -> None:
        """The send's record is final: its answer, or its recorded deadline error."""
        if record.response is not None:
            self.status = int(record.response["status"])
            self.outcome = "answered"
        else:
            self.outcome = "deadline_exceeded"

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if isinstance(exc, DeadlineExceeded):  # only the handler run's bound: not recorded
            self.outcome = "run_deadline"
        elif exc is not None:
            self.outcome = "error"
        if self._instruments is not None:
            self._instruments.sends.add(1, {"chttp.outcome": self.outcome})
        if self._span is not None:
            otel = telemetry.api()
            assert otel is not None
            self._span.set_attribute("chttp.outcome", self.outcome)
            self._span.set_attribute("chttp.attempts", self.attempts)
            if self.status is not None:
                self._span.set_attribute("http.response.status_code", self.status)
            if self.outcome != "answered":
                self._span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, self.outcome))
            if exc is not None and self.outcome == "error":
                self._span.record_exception(exc)
            otel.context.detach(self._token)
            self._span.end()
