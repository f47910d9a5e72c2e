"""README's "Metrics and traces" snippet runs as written and makes the library report.

The snippet is copied out of README.rst into ``telemetry.py``; a fresh interpreter
imports it first (as the README says), serves one certified request twice through
``CertifiedMiddleware`` on SQLite, flushes the console exporters, and the output must
name the receiver's span and its outcome counter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.server.live import REPO_ROOT
from tests.test_readme import _python_block

DRIVER = textwrap.dedent("""
    import sys
    import telemetry  # the README's snippet, first
    import webtest
    from opentelemetry import metrics, trace
    from chttp_server import CertifiedMiddleware

    def app(environ, start_response):
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"created"]

    front = CertifiedMiddleware(app, db_url=sys.argv[1], upgrade_schema=True)
    client = webtest.TestApp(front)
    for _ in range(2):
        client.post("/orders", b"one", headers={"X-Message-ID": "readme-1"})
    trace.get_tracer_provider().force_flush()
    metrics.get_meter_provider().force_flush()
""")


def test_the_readme_snippet_exports_spans_and_metrics(tmp_path):
    (tmp_path / "telemetry.py").write_text(_python_block("# telemetry.py"))
    (tmp_path / "driver.py").write_text(DRIVER)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), f"sqlite:///{tmp_path / 'readme.db'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": f"{tmp_path}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert '"name": "chttp.receive"' in done.stdout
    assert '"chttp.message_id": "readme-1"' in done.stdout
    assert '"name": "chttp.server.messages"' in done.stdout
    assert '"chttp.outcome": "replayed"' in done.stdout
