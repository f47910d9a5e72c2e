"""``chttp-server demo --console``: the console is up while the demo runs, gone after it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.server.live import REPO_ROOT

pytestmark = pytest.mark.slow


def _accepts(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=2):
            return True
    except OSError:
        return False


def test_the_demo_opens_the_console_on_its_databases_and_closes_it(tmp_path):
    directory = tmp_path / "run"
    demo = subprocess.Popen(
        [sys.executable, "-m", "chttp_server.cli", "demo", "--console", "--transfers", "20",
         "--kill-rate", "0", "--seed", "5", "--db-dir", str(directory)],
        cwd=REPO_ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert demo.stderr is not None
        line = demo.stderr.readline()
        assert line.startswith("console: http://127.0.0.1:"), line
        url = line.split()[1].rstrip("/")
        pages = {}
        with httpx.Client(base_url=url, timeout=30) as client:
            for path in ("/", "/messages", "/oplogs"):
                pages[path] = client.get(path)
            # The escrow's transfers appear while the demo runs (it waits for all 20 to end).
            seen = False
            while not seen and demo.poll() is None:
                text = client.get("/oplogs").text
                seen = (
                    '<tr class="open">' in text or '<tr class="done">' in text)
                time.sleep(0.05)
            assert seen, "no transfer's oplog showed up in the console while the demo ran"
        out, err = demo.communicate(timeout=300)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 0, out + err
    assert "PASSED" in out
    for path, page in pages.items():
        assert page.status_code == 200, (path, page.text)
    footer = pages["/"].text
    assert f"receiver store <code>sqlite:///{directory / 'escrow.db'}</code>" in footer
    assert f"journal <code>sqlite:///{directory / 'escrow.db'}</code>" in footer
    # Stopped with the demo: nothing listens there any more.
    deadline = time.monotonic() + 30
    while _accepts(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _accepts(url)
