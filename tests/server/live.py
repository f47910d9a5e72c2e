"""Real servers on 127.0.0.1 for the failure tests: in a thread, or as a process to kill.

The concurrency tests serve a middleware from a waitress thread in this process (so the
test can hold a handler at a gate); the crash tests run ``chttp-server serve`` as a
child process, because only a process can be killed with SIGKILL mid-transaction.
Every server started here is stopped by the context manager that started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from webtest.http import StopableWSGIServer

__all__ = ["wait_for", "serve_in_thread", "ServerProcess", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``.

    The timeout only turns a hang into a failure; no assertion depends on how fast.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def serve_in_thread(app: Callable[..., Any], *, threads: int = 8) -> Iterator[str]:
    """Serve ``app`` with waitress on a free loopback port; yield its base URL."""
    # The listening socket is bound by the constructor, so connections queue at once.
    server = StopableWSGIServer.create(app, host="127.0.0.1", threads=threads)
    try:
        yield server.application_url.rstrip("/")
    finally:
        server.shutdown()
        server.runner.join(10)


class ServerProcess:
    """``chttp-server serve`` as a child process (the real command line, a real process)."""

    def __init__(self, app: str, db_url: str, *, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        command = [sys.executable, "-m", "chttp_server.cli", "serve", "--app", app,
                   "--db", db_url, "--host", "127.0.0.1", "--port", "0", "--threads", "4",
                   *extra_args]
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if "serving" not in line:
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise AssertionError(f"chttp-server serve did not start: {line}{err}")
        self.url = line.strip().rsplit(" ", 1)[-1]

    def kill(self) -> None:
        """SIGKILL: no cleanup, no rollback from our side; the store must cope."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.communicate(timeout=10)
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()
