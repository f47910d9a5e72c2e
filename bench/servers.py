"""Real multi-worker HTTP servers for the bench: gunicorn on a loopback port.

A server counts as up only when *every* worker has answered: on two cores, starting
load while workers are still importing halves the first figures. :class:`Server` polls
``GET /pid`` over fresh connections (the kernel hands each to whichever worker accepts)
until it has seen ``workers`` distinct pids.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chttp_server.testing import free_port

__all__ = ["Server", "ServerFailed"]


#: The WSGI entry point of each framework's rows (the mode's prefix); else bench.app.
_APPLICATIONS = {"django": "bench.django_app:application", "flask": "bench.flask_app:application"}


class ServerFailed(RuntimeError):
    """The server exited or its workers did not all boot in time."""

    def __init__(self, message: str, *, log: str = "") -> None:
        super().__init__(f"{message}\n{log[-3000:]}" if log else message)
        self.log = log


class Server:
    """``gunicorn bench.app:application`` (or ``bench.django_app``, ``bench.flask_app``) in
    one mode, or ``uvicorn bench.fastapi_app:app`` for the FastAPI modes; a context
    manager."""

    def __init__(
        self,
        mode: str,
        db_url: str,
        *,
        # Worker processes; each is a full Python interpreter with its own pools.
        workers: int = 4,
        # Threads per worker (gthread): requests one worker serves at once.
        threads: int = 4,
        # Seconds to wait for every worker to answer before giving up.
        boot_timeout: float = 60.0,
    ) -> None:
        self.mode = mode
        self.db_url = db_url
        self.workers = workers
        self.threads = threads
        self.boot_timeout = boot_timeout
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._logdir = Path(tempfile.mkdtemp(prefix=f"chttp-bench-{mode}-"))
        self.log_path = self._logdir / "gunicorn.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        env = dict(os.environ, BENCH_MODE=self.mode, BENCH_DB_URL=self.db_url,
                   BENCH_POOL_SIZE=str(self.threads))
        if self.mode.startswith("fastapi-"):
            command = self._uvicorn_command()
        else:
            command = [
                sys.executable, "-m", "gunicorn",
                "--bind", self.address,
                "--workers", str(self.workers),
                "--worker-class", "gthread",
                "--threads", str(self.threads),
                "--backlog", "256",
                "--keep-alive", "30",
                "--error-logfile", str(self.log_path),
                "--log-level", "warning",
                # The framework rows serve the same endpoint from a Django project / Flask app.
                _APPLICATIONS.get(self.mode.split("-", 1)[0], "bench.app:application"),
            ]
        with open(self.log_path, "ab") as log:
            # gunicorn writes its own log file; uvicorn's workers log to stderr.
            self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                            stderr=log, start_new_session=True)
        self.wait_for_workers()

    def _uvicorn_command(self) -> list[str]:
        """uvicorn's own process manager: ``workers`` processes, one event loop each
        (the ASGI counterpart of gunicorn's workers; the loop replaces the threads)."""
        return [
            sys.executable, "-m", "uvicorn", "bench.fastapi_app:app",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers),
            "--backlog", "256",
            "--timeout-keep-alive", "30",
            "--log-level", "warning",
            "--no-access-log",
        ]

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_workers(self) -> set[int]:
        """Poll ``/pid`` until every worker has answered; return their pids."""
        assert self.process is not None
        seen: set[int] = set()
        deadline = time.monotonic() + self.boot_timeout
        while len(seen) < self.workers:
            if self.process.poll() is not None:
                raise ServerFailed(f"gunicorn ({self.mode}) exited with {self.process.returncode}",
                                   log=self._log())
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(f"only {len(seen)} of {self.workers} {self.mode} workers "
                                   f"answered within {self.boot_timeout:g}s", log=self._log())
            pid = self._ask_pid()
            if pid is None:
                time.sleep(0.05)
            else:
                seen.add(pid)
        return seen

    def _ask_pid(self) -> int | None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/pid", headers={"Connection": "close"})
            response = connection.getresponse()
            body = response.read()
            return int(body) if response.status == 200 else None
        except (OSError, ValueError, http.client.HTTPException):
            return None
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        shutil.rmtree(self._logdir, ignore_errors=True)
