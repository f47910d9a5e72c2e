"""README.rst's "FastAPI and Starlette" section runs as written: its module, its uvicorn
command (on a free port instead of 8000) and its curl exchange."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from chttp_server.testing import free_port
from tests.server.live import wait_for
from tests.test_readme import _command, _python_block

pytestmark = pytest.mark.slow


def test_the_fastapi_snippet_is_exactly_once_under_the_readmes_uvicorn_command(tmp_path: Path) -> None:
    (tmp_path / "orders_api.py").write_text(_python_block("# orders_api.py"))
    argv = _command("uvicorn orders_api:app")
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    assert argv[0] == "uvicorn"
    server = subprocess.Popen([sys.executable, "-m", *argv, "--host", "127.0.0.1"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert server.poll() is None, server.communicate()
            try:
                return httpx.get(base + "/docs", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, what="uvicorn")
        headers = {"X-Message-ID": "order-1"}
        first = httpx.post(base + "/orders", json={"item": "book"}, headers=headers, timeout=30)
        again = httpx.post(base + "/orders", json={"item": "book"}, headers=headers, timeout=30)
        plain = httpx.post(base + "/orders", json={"item": "pen"}, timeout=30)
    finally:
        server.kill()
        server.communicate(timeout=10)
    assert first.status_code == 201 and first.json() == {"id": 1, "message": "order-1"}
    assert first.headers["x-message-url"] == "/chttp/messages/order-1"
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert plain.json() == {"id": 2, "message": None}
    with sqlite3.connect(tmp_path / "orders.db") as database:
        assert database.execute("SELECT item FROM orders ORDER BY id").fetchall() == [("book",), ("pen",)]
        assert database.execute("SELECT count(*) FROM chttp_messages").fetchone() == (1,)
