"""The OpenTelemetry SDK's in-memory exporters, given to the library for one test.

``chttp_core.telemetry.configure`` points the library at a fresh tracer and meter
provider per test (a global provider cannot be unset, and would leak into every later
test); the global path is exercised in a subprocess (test_absent.py, the README test).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chttp_core import telemetry


class Recorded:
    """What the library reported during the test: finished spans, current metric values."""

    def __init__(self, spans: InMemorySpanExporter, metrics: InMemoryMetricReader) -> None:
        self._spans = spans
        self._metrics = metrics

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self._spans.get_finished_spans() if name is None or s.name == name]

    def _points(self, name: str) -> list[Any]:
        data = self._metrics.get_metrics_data()
        if data is None:
            return []
        return [point
                for resource in data.resource_metrics
                for scope in resource.scope_metrics if scope.scope.name == telemetry.SCOPE_NAME
                for metric in scope.metrics if metric.name == name
                for point in metric.data.data_points]

    def counter(self, name: str, attribute: str | None = None) -> dict[Any, int]:
        """``{attribute value: count}`` (``{None: count}`` for a counter without one)."""
        return {(dict(p.attributes or {}).get(attribute) if attribute else None): p.value
                for p in self._points(name) if p.value}

    def histogram(self, name: str) -> tuple[int, float]:
        """``(count, sum)`` of a histogram without attributes."""
        points = self._points(name)
        return (sum(p.count for p in points), sum(p.sum for p in points))


@pytest.fixture
def otel() -> Iterator[Recorded]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry.configure(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield Recorded(spans, reader)
    finally:
        telemetry.configure()
        tracer_provider.shutdown()
        meter_provider.shutdown()
