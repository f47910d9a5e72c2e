"""What the OpenTelemetry hooks cost per certified request: ``python -m bench.otel_cost``.

Three fresh interpreters, one per state: ``absent`` (an import blocker hides
``opentelemetry``), ``unconfigured`` (the API installed, no provider set) and
``configured`` (the SDK with in-memory exporters, every span and metric recorded).
Each times, in process (no sockets), (a) the receiver's hooks alone — one observation
with its claim, handler and store phases — and (b) whole certified requests through
``CertifiedMiddleware`` on a SQLite file (fresh ids: claim, run, store, commit) and
replays (one read). Prints microseconds per request; nothing is asserted.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STATES = ("absent", "unconfigured", "configured")


def _measure(state: str, directory: str, requests: int) -> dict[str, float]:
    if state == "absent":
        from tests.telemetry.scenario import BlockOpenTelemetry
        sys.meta_path.insert(0, BlockOpenTelemetry())
    if state == "configured":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from chttp_core import telemetry
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        telemetry.configure(tracer_provider=tracer_provider,
                            meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))
    from chttp_server import CertifiedMiddleware
    from chttp_server.telemetry import observe_message

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/x"}
    guard = contextlib.nullcontext()
    hooks = 5000
    started = time.perf_counter()
    for _ in range(hooks):
        with observe_message(environ, "m") as observed:
            with observed.claim():
                pass
            with observed.handler(guard):  # stands in for the store-error guard
                pass
            with observed.store(10):
                pass
            observed.finish("processed", 201)
    hook_us = (time.perf_counter() - started) / hooks * 1e6

    def app(environ, start_response):
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"created"]

    front = CertifiedMiddleware(app, db_url=f"sqlite:///{directory}/{state}.db", upgrade_schema=True)

    def call(message_id: str) -> None:
        env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/orders", "SCRIPT_NAME": "",
               "QUERY_STRING": "", "CONTENT_LENGTH": "3", "wsgi.input": __import__("io").BytesIO(b"one"),
               "HTTP_X_MESSAGE_ID": message_id}
        b"".join(front(env, lambda status, headers, exc_info=None: None))

    for number in range(50):  # warm up
        call(f"warm-{number}")
    started = time.perf_counter()
    for number in range(requests):
        call(f"id-{number}")
    fresh_us = (time.perf_counter() - started) / requests * 1e6
    started = time.perf_counter()
    for number in range(requests):
        call(f"id-{number}")
    replay_us = (time.perf_counter() - started) / requests * 1e6
    front.engine.dispose()
    return {"hooks": hook_us, "fresh": fresh_us, "replay": replay_us}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(_measure(sys.argv[2], sys.argv[3], 1000)))
        return
    rounds = 3
    results: dict[str, list[dict[str, float]]] = {state: [] for state in STATES}
    with tempfile.TemporaryDirectory() as directory:
        for round_number in range(rounds):  # interleaved, so drift hits every state alike
            for state in STATES:
                run_dir = Path(directory) / f"{state}-{round_number}"
                run_dir.mkdir()
                done = subprocess.run([sys.executable, "-m", "bench.otel_cost", "--child", state,
                                       str(run_dir)], capture_output=True, text=True, check=True)
                results[state].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'state':<14}{'hooks alone':>14}{'fresh request':>16}{'replay':>12}   (µs, median of {rounds})")
    for state in STATES:
        row = {key: statistics.median(r[key] for r in results[state]) for key in ("hooks", "fresh", "replay")}
        print(f"{state:<14}{row['hooks']:>14.2f}{row['fresh']:>16.1f}{row['replay']:>12.1f}")


if __name__ == "__main__":
    main()
