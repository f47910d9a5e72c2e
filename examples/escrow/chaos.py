"""The demo's processes, and the chaos loop that SIGKILLs and restarts them.

Each service is a child process (``python -m chttp_examples.escrow.…``) with its output
appended to a log file. The chaos loop kills processes at random moments —
exponentially distributed gaps on each process's own clock, ``kill_rate`` kills per
second over all of them while they run — with SIGKILL (no cleanup, no flush, no goodbye:
a power cut as far as the process can tell), and starts each again after a short random
pause. A process that has just started is
spared until it has been ready (through its imports, its port open) for ``min_uptime``
seconds. All randomness comes from one seeded
``random.Random``; the moments still vary run to run because the processes do.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["Service", "Chaos", "wait_for_port"]


class Service:
    """One restartable child process."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *,
                 port: int | None = None, ready_file: Path | None = None,
                 restart_until_success: bool = False) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.port = port
        #: How we know the process got through its imports: its port accepts, or it
        #: created this file.
        self.ready_file = ready_file
        self.ready_at: float | None = None
        #: A job that ends (the client): once it exits 0 it is finished, not restarted.
        self.restart_until_success = restart_until_success
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_at = 0.0
        self.kills = 0
        self.failures = 0          # exits with a non-zero status that we did not cause
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self.ready_file is not None:
                self.ready_file.unlink(missing_ok=True)
            self.ready_at = None
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,   # a Ctrl-C on the demo is ours to handle
                )
            self.starts += 1
            self.started_at = time.monotonic()

    def ready_for(self) -> float:
        """Seconds since the process became ready; 0 while it starts (or is dead)."""
        if not self.alive:
            return 0.0
        if self.ready_at is None:
            if self.ready_file is not None:
                ready = self.ready_file.exists()
            elif self.port is not None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        ready = True
                except OSError:
                    ready = False
            else:
                ready = True
            if not ready:
                return 0.0
            self.ready_at = time.monotonic()
        return time.monotonic() - self.ready_at

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def finished(self) -> bool:
        """A job that exited 0 on its own."""
        return (self.restart_until_success and self.process is not None
                and self.process.poll() == 0)

    def kill(self) -> bool:
        """SIGKILL the process if it runs; True if it was killed."""
        with self._lock:
            if self.process is None or self.process.poll() is not None:
                return False
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.kills += 1
            return True

    def stop(self) -> None:
        """Stop for good at the end of the demo (SIGTERM, then SIGKILL)."""
        with self._lock:
            if self.process is None or self.process.poll() is not None:
                return
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def check(self) -> None:
        """Restart a process that died on its own (and count it); leave a finished job."""
        if self.process is None or self.alive or self.finished:
            return
        self.failures += 1
        self.start()


def wait_for_port(port: int, *, timeout: float = 30.0, service: Service | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service is not None and service.process is not None and service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.process.returncode} at "
                               f"start-up; see {service.log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


@dataclass
class Chaos:
    """Kills live services at random moments, then restarts each after a short pause.

    ``kill_rate`` is shared out evenly: each of the *n* services is killed at a rate of
    ``kill_rate / n`` per second while it is *eligible* — alive, and ready for at least
    ``min_uptime``. Each service has its own clock. (An earlier loop drew one stream of
    kills for all of them and let a kill that found nobody eligible wait for the first
    process to become ready: at high rates every process was then killed the moment its
    grace ended, before it could do any work — the demo sat at 0/100 for a minute and
    more. Independent clocks give every process the same chance to work, whatever
    happens to the others.) A restart is scheduled, not slept: other services' kills
    go on while one is down. The rate achieved is lower than ``kill_rate`` because a
    process is not eligible while it is down or starting; the report shows both.
    """

    services: Sequence[Service]
    #: Mean kills per second over all services while they are eligible; 0 turns chaos off.
    kill_rate: float
    rng: random.Random
    #: Longest pause between the kill and the restart, in seconds.
    max_downtime: float = 0.5
    #: A process is spared until it has been ready this long (seconds). A Python process
    #: needs a second or more to import and open its database; killing it faster than it
    #: can start would measure start-up, never the protocol.
    min_uptime: float = 0.5
    on_event: Callable[[str], None] = lambda text: None
    kills: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos", daemon=True)
        self._started = time.monotonic()
        self._kill_at: dict[str, float] = {}
        self._restart_at: dict[str, float] = {}

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def achieved_rate(self) -> float:
        """Kills per second since the chaos started."""
        elapsed = time.monotonic() - self._started
        return len(self.kills) / elapsed if elapsed > 0 else 0.0

    def _loop(self) -> None:
        # The first kill comes as soon as a process has been ready for min_uptime, so
        # every run with chaos on sees at least one, however fast the transfers finish.
        first = self.kill_rate > 0
        while not self._stop.wait(0.05):
            now = time.monotonic()
            for service in self.services:
                restart_at = self._restart_at.get(service.name)
                if restart_at is not None:
                    if now >= restart_at:
                        del self._restart_at[service.name]
                        service.start()
                    continue
                service.check()
                if self.kill_rate <= 0 or service.ready_for() < self.min_uptime:
                    self._kill_at.pop(service.name, None)   # a new clock once eligible
                    continue
                if first:
                    first = False
                    self._kill_at[service.name] = now
                kill_at = self._kill_at.setdefault(service.name, now + self._gap())
                if now >= kill_at and service.kill():
                    del self._kill_at[service.name]
                    self.kills.append((now - self._started, service.name))
                    self.on_event(f"killed {service.name}")
                    self._restart_at[service.name] = now + self.rng.uniform(0.0, self.max_downtime)

    def _gap(self) -> float:
        """Seconds until this service's next kill: exponential, mean n / kill_rate."""
        return self.rng.expovariate(self.kill_rate / len(self.services))
