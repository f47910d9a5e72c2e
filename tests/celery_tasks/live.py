"""Real Redis and real prefork Celery workers for the Celery tests: started, killed, stopped.

``redis-server`` (Debian's package; ``.ci/run`` installs it) runs on a free loopback
port with persistence off; each worker is ``python -m celery worker --pool prefork`` in
a session (process group) of its own, so that :meth:`Worker.kill` SIGKILLs the worker
*and* its pool children at once, as a host crash or an OOM kill of the whole container
would. Every process started here is stopped by whoever started it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.server.live import REPO_ROOT, wait_for

__all__ = ["RedisServer", "Worker", "free_port", "redis_server_binary"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_server_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)


class RedisServer:
    """``redis-server`` on a free loopback port, nothing written to disk."""

    def __init__(self, directory: Path) -> None:
        binary = redis_server_binary()
        assert binary, "redis-server is not installed (.ci/run installs it)"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, timeout=15, what="redis-server to answer")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Worker:
    """One ``celery worker`` (prefork, ``concurrency`` children) of ``app`` (tests.celery_tasks.tasks)."""

    def __init__(self, name: str, log_dir: Path, *, concurrency: int = 2,
                 env: dict[str, str] | None = None, app: str = "tests.celery_tasks.tasks") -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._log_file = open(self.log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker",
             "--pool", "prefork", "--concurrency", str(concurrency), "--hostname", f"{name}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
            cwd=REPO_ROOT, env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO_ROOT)},
            stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> Worker:
        wait_for(lambda: b" ready." in self.log.read_bytes() or self.process.poll() is not None,
                 timeout=timeout, what=f"worker {self.name} to be ready")
        assert self.process.poll() is None, self.log.read_text()
        return self

    def owns(self, pid: int) -> bool:
        """True if ``pid`` (a pool child, say a lease owner) belongs to this worker."""
        try:
            return os.getpgid(pid) == self.process.pid
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        """SIGKILL the worker and its pool children together (a crashed host)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        self._log_file.close()

    def stop(self) -> None:
        """Warm shutdown (SIGTERM: finish the running tasks), SIGKILL if it hangs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def wait_until(condition, *, timeout: float = 60, what: str = "condition"):  # type: ignore[no-untyped-def]
    """:func:`tests.server.live.wait_for` with a coarser poll (these waits are seconds long)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
