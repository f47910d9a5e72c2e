"""The Django middleware's telemetry, in a subprocess (Django's settings are per process).

``python -m tests.telemetry.django_scenario DIR`` prints JSON: the outcome counter and
the ``chttp.receive`` spans after a fixed series of requests through Django's test client.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import django
from django.conf import settings


def main(directory: Path) -> dict[str, Any]:
    from tests.examples import django_test_settings as base

    names = {name: getattr(base, name) for name in dir(base) if name.isupper()}
    names["DATABASES"] = {"default": {"ENGINE": "django.db.backends.sqlite3",
                                      "NAME": str(directory / "django.db")}}
    settings.configure(**names)
    django.setup()

    from django.core.management import call_command
    from django.test import Client
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from chttp_core import telemetry

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry.configure(tracer_provider=tracer_provider,
                        meter_provider=MeterProvider(metric_readers=[reader]))

    call_command("migrate", verbosity=0)
    client = Client(raise_request_exception=False)

    def post(path: str, message_id: str, body: bytes = b"{}", **headers: str) -> int:
        return client.post(path, body, content_type="application/json",
                           headers={"X-Message-ID": message_id, **headers}).status_code

    statuses = [
        post("/orders/counted", "dj-1",
             traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        post("/orders/counted", "dj-1"),
        post("/orders/counted", "dj-1", b'{"changed": true}'),
        post("/orders/busy", "dj-2"),
        post("/orders/explode", "dj-3"),
    ]
    counts = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "chttp.server.messages":
                    counts = {p.attributes["chttp.outcome"]: p.value for p in metric.data.data_points}
    receives = [s for s in spans.get_finished_spans() if s.name == "chttp.receive"]
    return {
        "statuses": statuses,
        "counts": counts,
        "message_ids": [s.attributes["chttp.message_id"] for s in receives],
        "first_trace": format(receives[0].context.trace_id, "032x"),
        "handler_spans": sum(1 for s in spans.get_finished_spans() if s.name == "chttp.handler"),
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
