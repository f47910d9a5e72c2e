"""Without OpenTelemetry, and with it but unconfigured: everything works, nothing recorded.

Each case runs in a fresh interpreter (tests/telemetry/scenario.py): an absent package
is simulated by an import blocker for ``opentelemetry``, and global providers, once set,
cannot be unset in this test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.server.live import REPO_ROOT


def scenario(mode: str, tmp_path) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.telemetry.scenario", mode, str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_opentelemetry_everything_works_and_nothing_is_imported(tmp_path):
    seen = scenario("absent", tmp_path)
    assert seen["before"] == {"status": 201, "first": 201, "replayed": "true",
                              "traceparent_sent": False}
    assert seen["api"] is False and seen["noop"] is True
    assert seen["otel_imported"] == []


def test_unconfigured_is_a_no_op_until_the_application_sets_global_providers(tmp_path):
    seen = scenario("global", tmp_path)
    # The API is installed but no provider is set: the hooks are the shared no-op.
    assert seen["api"] is True and seen["noop"] is True
    assert seen["before"]["traceparent_sent"] is False
    # Providers set later (after the first requests) are honoured.
    assert seen["after"] == {"status": 201, "first": 201, "replayed": "true",
                             "traceparent_sent": True}
    assert seen["spans"] == ["chttp.claim", "chttp.handler", "chttp.receive", "chttp.send",
                             "chttp.store"]
    assert {"chttp.server.messages", "chttp.client.sends", "chttp.client.attempts",
            "chttp.client.oplogs"} <= set(seen["metrics"])


def test_a_provider_named_by_the_environment_is_honoured_from_the_first_request() -> None:
    # The API loads such a provider on its getters' first call; the per-request test
    # (chttp_core.telemetry.unconfigured) must not answer "off" before anyone called them.
    code = ("from chttp_core import telemetry; "
            "print(telemetry.unconfigured(), telemetry.tracing() is not None)")
    for variable, group_entry in (("OTEL_PYTHON_TRACER_PROVIDER", "sdk_tracer_provider"),
                                  ("OTEL_PYTHON_METER_PROVIDER", "sdk_meter_provider")):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=120,
                              env={**os.environ, variable: group_entry})
        assert done.returncode == 0, done.stderr
        unconfigured, _tracing = done.stdout.split()
        assert unconfigured == "False", (variable, done.stdout)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("OTEL_PYTHON_")})
    assert done.stdout.split() == ["True", "False"], done.stderr
