"""A receiver and a sender in a fresh interpreter: ``python -m tests.telemetry.scenario MODE DIR``.

``absent``: ``opentelemetry`` cannot be imported (an import blocker stands in for an
install without the extra); ``global``: the API is there but unconfigured at first,
then the application sets global SDK providers. Prints one JSON line of what it saw.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
from pathlib import Path


class BlockOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "opentelemetry" or fullname.startswith("opentelemetry."):
            raise ImportError(f"No module named {fullname!r} (blocked by the test)")


def exchange(directory: Path, message_id: str) -> dict:
    """One certified send from a resumable function to a certified receiver, then a replay."""
    import httpx
    import webtest

    from chttp_client import Journal, resumable
    from tests.client.receiver import make_receiver

    receiver = make_receiver(f"sqlite:///{directory / (message_id + '-receiver.db')}")
    seen_headers: list[list[str]] = []

    def spy(environ, start_response):
        seen_headers.append(sorted(k for k in environ if k.startswith("HTTP_")))
        return receiver(environ, start_response)

    with Journal(f"sqlite:///{directory / (message_id + '-journal.db')}",
                 transport=httpx.WSGITransport(app=spy)) as journal:
        @resumable(journal, name=f"scenario.{message_id}")
        def send(*, chttp_context):
            return chttp_context.post("http://receiver.test/escrow", json={"amount": 1}).status_code

        status = send()
    replay = webtest.TestApp(receiver).post(
        "/escrow", b'{"amount": 2}', headers={"X-Message-ID": message_id},
        content_type="application/json")
    again = webtest.TestApp(receiver).post(
        "/escrow", b'{"amount": 2}', headers={"X-Message-ID": message_id},
        content_type="application/json")
    receiver.engine.dispose()
    return {"status": status, "replayed": again.headers.get("Idempotent-Replayed"),
            "first": replay.status_int, "traceparent_sent": any(
                "HTTP_TRACEPARENT" in headers for headers in seen_headers)}


def main(mode: str, directory: Path) -> None:
    if mode == "absent":
        sys.meta_path.insert(0, BlockOpenTelemetry())
    from chttp_core import telemetry
    from chttp_server.telemetry import observe_message

    result: dict = {"mode": mode}
    result["before"] = exchange(directory, "before")
    result["api"] = telemetry.api() is not None
    result["noop"] = observe_message({}, "x") is telemetry.NOOP
    if mode == "global":
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        result["after"] = exchange(directory, "after")
        result["spans"] = sorted({span.name for span in spans.get_finished_spans()})
        data = reader.get_metrics_data()
        result["metrics"] = sorted({m.name for r in data.resource_metrics
                                    for s in r.scope_metrics for m in s.metrics})
    result["otel_imported"] = sorted(name for name in sys.modules if name.startswith("opentelemetry"))[:3]
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
