"""OpenTelemetry, optional: imported lazily once, and skipped while nobody configured it.

Both halves report metrics and spans through the OpenTelemetry *API*
(``pip install -e '.[otel]'`` in the checkout); the application chooses an SDK and its
exporters, as for any other instrumented library. Two promises shape this module:

* **No cost when absent.** ``opentelemetry`` is imported on first use, once; when it is
  not installed every hook of :mod:`chttp_server.telemetry` and
  :mod:`chttp_client.telemetry` is a shared no-op object, and nothing is recorded.
* **No cost when unconfigured.** The API's own no-op path still builds a span object
  and attaches a context per call (microseconds per request). Until the application
  sets a tracer provider (``trace.set_tracer_provider``) or a meter provider
  (``metrics.set_meter_provider``), :func:`tracing` and :func:`metering` answer
  ``None`` and the hooks stay no-ops. The API lets a global provider be set only once,
  so a positive answer is cached; a negative one is asked again on every request
  (:func:`unconfigured`: two attribute reads) so that a provider set after the
  middleware was built is still honoured.

W3C trace context (https://www.w3.org/TR/trace-context/) travels in ``traceparent`` /
``tracestate``: :func:`trace_headers` gives them for the current span (the sender adds
them to every attempt of a certified send), :func:`extract_from_environ` reads them off
a WSGI environ (or Django's ``request.META``) on the receiver. Neither is ever part of
a send's recorded request, so a resumed send under another trace is still the same
message (docs/protocol.rst §5.5).
"""

from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType, TracebackType
from collections.abc import Iterable
from typing import Any, Callable, Generic, TypeVar

__all__ = [
    "SCOPE_NAME",
    "TRACE_HEADERS",
    "NoOp",
    "NOOP",
    "api",
    "configure",
    "tracing",
    "metering",
    "unconfigured",
    "trace_headers",
    "extract_from_environ",
    "InstrumentCache",
]

#: The instrumentation scope of every meter and tracer of this library.
SCOPE_NAME = "certified-http"

#: The request headers of W3C trace context (and baggage) the library adds and reads;
#: a send's recorded request never keeps them (:mod:`chttp_client.recorded_sends`).
TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})

_LOCK = threading.Lock()
_UNSET: Any = object()
_api: Any = _UNSET
_tracer: Any = None
_meter: Any = None


class NoOp:
    """One object that does nothing, whatever is asked of it: the hooks when telemetry is off.

    A context manager, a callable and an attribute bag at once, so a hook site never
    tests whether telemetry is on: ``with observed.claim(): …``, ``observed.finish(x)``.
    """

    __slots__ = ()

    def __enter__(self) -> NoOp:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        return None

    def __call__(self, *_args: Any, **_kwargs: Any) -> NoOp:
        return self

    def __getattr__(self, _name: str) -> NoOp:
        return self

    # The names the receiver asks for on every request, answered without __getattr__'s
    # failed lookup first (chttp_server.telemetry.MessageObservation's hooks).
    def claim(self, *_args: Any, **_kwargs: Any) -> NoOp:
        return self

    store = handler = finish = claim

    def __bool__(self) -> bool:
        return False


#: The shared no-op (falsy: ``if observed:`` tells a live observation from it).
NOOP = NoOp()


class _Api:
    """The parts of the OpenTelemetry API this library uses, imported once."""

    def __init__(self, trace: ModuleType, metrics: ModuleType, propagate: ModuleType,
                 context: ModuleType) -> None:
        self.trace = trace
        self.metrics = metrics
        self.propagate = propagate
        self.context = context
        self.proxy_tracer_provider = trace.ProxyTracerProvider
        # Where this API version keeps its two global providers (unset: None), for
        # :func:`unconfigured`; None where it keeps them elsewhere, or where an environment
        # variable names a provider (the public getters load it on their first call).
        self.globals: tuple[ModuleType, ModuleType] | None = None
        try:  # the API's placeholder until a meter provider is set (no public name)
            from opentelemetry.metrics import _internal as metrics_internal
            from opentelemetry.metrics._internal import _ProxyMeterProvider
            self.proxy_meter_provider: type = _ProxyMeterProvider
        except ImportError:  # pragma: no cover - another API version
            self.proxy_meter_provider = type(metrics.get_meter_provider())
        else:
            environment_names_one = any(name in os.environ for name in _PROVIDER_VARIABLES)
            if (not environment_names_one and hasattr(trace, "_TRACER_PROVIDER")
                    and hasattr(metrics_internal, "_METER_PROVIDER")):
                self.globals = (trace, metrics_internal)


#: The environment variables through which OpenTelemetry's API loads a provider itself.
_PROVIDER_VARIABLES = ("OTEL_PYTHON_TRACER_PROVIDER", "OTEL_PYTHON_METER_PROVIDER")


def api() -> _Api | None:
    """The OpenTelemetry API, or ``None`` when it is not installed (imported once)."""
    global _api
    if _api is _UNSET:
        with _LOCK:
            if _api is _UNSET:
                try:
                    modules = [importlib.import_module(f"opentelemetry.{name}")
                               for name in ("trace", "metrics", "propagate", "context")]
                except ImportError:
                    _api = None
                else:
                    _api = _Api(*modules)
    result: _Api | None = _api
    return result


def configure(*, tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Report to these providers instead of the global ones (``None``: back to the global).

    Like the ``tracer_provider=`` / ``meter_provider=`` of OpenTelemetry's own
    instrumentations: for an application that keeps its providers out of the globals,
    and for tests, which cannot unset a global provider once set.
    """
    global _tracer, _meter
    with _LOCK:
        _tracer = None if tracer_provider is None else tracer_provider.get_tracer(SCOPE_NAME)
        _meter = None if meter_provider is None else meter_provider.get_meter(SCOPE_NAME)


def unconfigured() -> bool:
    """True if :func:`tracing` and :func:`metering` would both answer ``None``: the
    receiver's test on every request, made cheap.

    Asking the API's two public getters costs a lookup in ``os.environ`` each (~10 µs a
    request together, measured in ``python -m bench.profile``); here, once the API is
    imported, its two globals are read directly where this version keeps them and no
    environment variable names a provider (read when the API is first imported: a
    process sets those before it starts). Otherwise the public calls answer.
    """
    if _tracer is not None or _meter is not None:
        return False
    otel = api()
    if otel is None:
        return True
    if otel.globals is not None:
        trace, metrics_internal = otel.globals
        if trace._TRACER_PROVIDER is None and metrics_internal._METER_PROVIDER is None:
            return True
    return tracing() is None and metering() is None


def tracing() -> Any:
    """This library's tracer once a tracer provider is set, else ``None``."""
    global _tracer
    if _tracer is not None:
        return _tracer
    otel = api()
    if otel is None:
        return None
    provider = otel.trace.get_tracer_provider()
    if isinstance(provider, otel.proxy_tracer_provider):
        return None
    _tracer = provider.get_tracer(SCOPE_NAME)
    return _tracer


def metering() -> Any:
    """This library's meter once a meter provider is set, else ``None``."""
    global _meter
    if _meter is not None:
        return _meter
    otel = api()
    if otel is None:
        return None
    provider = otel.metrics.get_meter_provider()
    if isinstance(provider, otel.proxy_meter_provider):
        return None
    _meter = provider.get_meter(SCOPE_NAME)
    return _meter


def trace_headers() -> list[tuple[str, str]]:
    """``traceparent`` (and friends) for the current span; ``[]`` when tracing is off."""
    if tracing() is None:
        return []
    otel = api()
    assert otel is not None
    carrier: dict[str, str] = {}
    otel.propagate.inject(carrier)
    return list(carrier.items())


class _EnvironGetter:
    """The propagator's getter over a WSGI environ: ``traceparent`` is ``HTTP_TRACEPARENT``."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return None if value is None else [str(value)]

    def keys(self, carrier: dict[str, Any]) -> Iterable[str]:
        return [key[5:].lower().replace("_", "-") for key in carrier if key.startswith("HTTP_")]


_ENVIRON_GETTER = _EnvironGetter()


def extract_from_environ(environ: dict[str, Any]) -> Any:
    """The OpenTelemetry context a request's trace headers carry, else the current one.

    When a span is already current (an outer OpenTelemetry WSGI/Django instrumentation
    extracted the headers itself) that span's context is kept. ``None`` when tracing is off.
    """
    if tracing() is None:
        return None
    otel = api()
    assert otel is not None
    if otel.trace.get_current_span().get_span_context().is_valid:
        return otel.context.get_current()
    return otel.propagate.extract(environ, getter=_ENVIRON_GETTER)


_Instruments = TypeVar("_Instruments")


class InstrumentCache(Generic[_Instruments]):
    """One half's metric instruments, made once per meter and again after
    :func:`configure` installs another (both halves keep theirs in one of these)."""

    def __init__(self, make: Callable[[Any], _Instruments]) -> None:
        self._make = make
        self._lock = threading.Lock()
        #: ``(meter, instruments)`` in one tuple, so a reader never pairs the two wrongly.
        self._cached: tuple[Any, _Instruments] | None = None

    def get(self, meter: Any) -> _Instruments | None:
        """The instruments of ``meter``; ``None`` when metrics are off (``meter`` None)."""
        if meter is None:
            return None
        cached = self._cached
        if cached is None or cached[0] is not meter:  # first use, or configure()
            with self._lock:
                cached = self._cached
                if cached is None or cached[0] is not meter:
                    cached = self._cached = (meter, self._make(meter))
        return cached[1]
