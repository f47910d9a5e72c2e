"""uvicorn as a child process on a free loopback port: a real server a test can SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from chttp_server.testing import free_port

__all__ = ["UvicornProcess", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class UvicornProcess:
    """``python -m uvicorn APP`` (one worker, the asyncio loop), stopped on exit."""

    def __init__(self, app: str, env: dict[str, str], *, timeout: float = 60.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port",
             str(self.port), "--log-level", "warning", "--no-access-log"],
            cwd=REPO_ROOT, env={**os.environ, **env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + timeout
        while not self._accepting():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"uvicorn did not start: {self.output()}")
            time.sleep(0.05)
        self._stderr = ""

    def _accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return httpx.get(self.url + "/ping", timeout=5).status_code == 200
        except (OSError, httpx.HTTPError):
            return False

    def output(self) -> str:
        if self.process.poll() is None:
            return ""
        out, err = self.process.communicate(timeout=10)
        return (out or "") + (err or "")

    def kill(self) -> None:
        """SIGKILL: no clean-up, no rollback from our side; the store must cope."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def __enter__(self) -> UvicornProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()
        if self.process.stdout:
            self.process.stdout.close()
        if self.process.stderr:
            self.process.stderr.close()
