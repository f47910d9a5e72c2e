"""The whole multi-host topology, started and stopped as one.

::

    with Topology(workdir, synchronous=True, via="pgbouncer") as topo:
        load = topo.start_load(workers=4)
        …inject a fault: topo.kill_receiver(0), topo.db.kill_primary(), topo.cut(1), …
        report = topo.stop_load_and_check(load)

* the database host (the root namespace, on the bridge): a PostgreSQL primary with a
  streaming standby (synchronous unless told otherwise) and PgBouncer in transaction
  pooling mode in front of the primary;
* ``receivers`` receiver hosts, each its own namespace running :mod:`.receiver`, which
  reaches the store through PgBouncer (``via="pgbouncer"``) or through libpq's multi-host
  URL with ``target_session_attrs=read-write`` (``via="multihost"``: after a failover it
  finds the promoted standby by itself);
* ``clients`` client hosts running :mod:`.loadgen` against every receiver.

Every process runs in its own session and is SIGKILLed by :meth:`Topology.close`, which
also removes the servers' files and every namespace, link and rule.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chttp_examples.multihost.app import EFFECTS_DDL, HOST_ENV
from chttp_examples.multihost.database import PgBouncer, ReplicatedPostgres, query
from chttp_examples.multihost.history import Report, check, read_attempts, read_database
from chttp_examples.multihost.netns import Host, Network

__all__ = ["Topology", "Load", "ReceiverHost", "RECEIVER_PORT", "STORE_OPTIONS", "kill_process"]

RECEIVER_PORT = 8080

#: libpq options for the receivers' store URL. A receiver cut off from the database must
#: fail instead of hanging: connect_timeout bounds a new connection, tcp_user_timeout
#: (milliseconds) a statement whose packets go unanswered.
STORE_OPTIONS = {"connect_timeout": "2", "tcp_user_timeout": "4000"}


@dataclass
class ReceiverHost:
    host: Host
    url: str
    process: subprocess.Popen[str] | None = None


@dataclass
class Load:
    """The client processes of one run and the history files they append to."""

    processes: list[subprocess.Popen[str]]
    histories: list[Path]
    stop_file: Path
    started_at: float = field(default_factory=time.time)


def _spawn(command: list[str], *, log: Path, env: dict[str, str] | None = None,
           ready: str, timeout: float = 60) -> subprocess.Popen[str]:
    """Start ``command`` in a new session; wait for a stdout line containing ``ready``."""
    with open(log, "a") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 0.5)
        if readable:
            line = process.stdout.readline()
            if ready in line:
                return process
            if not line:
                break
        elif process.poll() is not None:
            break
    _kill(process)
    raise RuntimeError(f"{' '.join(command)} did not start: {log.read_text()[-2000:]}")


def kill_process(process: subprocess.Popen[Any] | None) -> None:
    """SIGKILL a process this topology started (its whole session), and reap it."""
    _kill(process)


def _kill(process: subprocess.Popen[Any] | None) -> None:
    """SIGKILL ``process``'s session (a no-op if it ended), reap it, close its pipe."""
    if process is None:
        return
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


class Topology:
    """See the module docstring. All options are keyword-only."""

    def __init__(self, workdir: Path | None = None, *, receivers: int = 3, clients: int = 2,
                 synchronous: bool = True, via: str = "pgbouncer", threads: int = 6) -> None:
        if via not in ("pgbouncer", "multihost"):
            raise ValueError("via must be 'pgbouncer' or 'multihost'")
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="chttp-mh-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.threads = threads
        self.network = Network()
        self.db: ReplicatedPostgres | None = None
        self.bouncer: PgBouncer | None = None
        self.receivers: list[ReceiverHost] = []
        self.loads: list[Load] = []
        self.others: list[subprocess.Popen[str]] = []
        try:
            self.db = ReplicatedPostgres(listen=self.network.gateway, subnet=self.network.subnet,
                                         synchronous=synchronous)
            self._prepare_schema()
            self.bouncer = PgBouncer(listen=self.network.gateway, backend_port=self.db.primary.port)
            self.bouncer.start()
            self.store_url = (self.bouncer.url(self.db.database, **STORE_OPTIONS) if via == "pgbouncer"
                              else self.db.multihost_url(**STORE_OPTIONS))
            for number in range(receivers):
                host = self.network.add_host(f"r{number + 1}")
                self.receivers.append(ReceiverHost(host, f"http://{host.address}:{RECEIVER_PORT}"))
            self.clients = [self.network.add_host(f"c{number + 1}") for number in range(clients)]
            for number in range(receivers):
                self.start_receiver(number)
        except BaseException:
            self.close()
            raise

    def _prepare_schema(self) -> None:
        from chttp_core import migrate

        assert self.db is not None
        url = f"postgresql://postgres@127.0.0.1:{self.db.primary.port}/{self.db.database}"
        migrate.upgrade(url)
        query(self.db.primary.port, EFFECTS_DDL, database=self.db.database)

    # -- receivers ---------------------------------------------------------------------

    def start_receiver(self, number: int) -> None:
        receiver = self.receivers[number]
        _kill(receiver.process)
        receiver.process = _spawn(
            receiver.host.command(sys.executable, "-m",
                                  f"chttp_examples.multihost.{self.receiver_module(number)}",
                                  "--db", self.store_url_for(number), "--host", receiver.host.address,
                                  "--port", str(RECEIVER_PORT), "--threads", str(self.threads)),
            log=self.workdir / f"{receiver.host.name}.log", env={HOST_ENV: receiver.host.name},
            ready="serving",
        )

    def store_url_for(self, number: int) -> str:
        """The store URL receiver ``number`` is started with (the same for all here)."""
        return self.store_url

    def receiver_module(self, number: int) -> str:
        """The module receiver ``number`` runs (:mod:`.receiver`, WSGI, here)."""
        return "receiver"

    def stuck_workers(self) -> str:
        """The receivers' requests still in flight (``GET /_inflight``: :mod:`.inflight`).

        Called once the load has ended (every client stopped waiting): what is left is a
        worker that never answered. A receiver that cannot answer within 5 s (all its
        workers busy, or it is down) is named as such.
        """
        import httpx

        counts, oldest, silent = 0, 0.0, []
        for receiver in self.receivers:
            try:
                found = httpx.get(f"{receiver.url}/_inflight", timeout=5.0).json()
            except (httpx.HTTPError, ValueError):
                silent.append(receiver.host.name)
                continue
            counts += int(found["in_flight"])
            oldest = max(oldest, float(found["oldest"]))
        return (f"{counts}" + (f" (oldest {oldest:.1f} s)" if counts else "")
                + (f"; no answer from {', '.join(silent)}" if silent else ""))

    def kill_receiver(self, number: int) -> None:
        """SIGKILL receiver ``number`` mid-whatever: its open transactions roll back."""
        _kill(self.receivers[number].process)

    def cut(self, number: int) -> None:
        """Partition receiver ``number`` from the database host (PostgreSQL and PgBouncer)."""
        assert self.db is not None and self.bouncer is not None and self.db.standby is not None
        self.network.cut(self.receivers[number].host,
                         [self.db.primary.port, self.db.standby.port, self.bouncer.port])

    def restore(self, number: int) -> None:
        self.network.restore(self.receivers[number].host)

    # -- load --------------------------------------------------------------------------

    def start_load(self, *, workers: int = 3, prefix: str = "m", pause: float = 0.0,
                   clients: int | None = None, count: int | None = None,
                   first: int | None = None, linger: float = 0.0) -> Load:
        """Start one load-generator process on each client host (the first ``clients``).

        ``count``, ``first`` and ``linger`` are :mod:`.loadgen`'s options: a probe that
        sends one slow message through a chosen receiver is ``count=1, first=n, linger=s``.
        """
        stop_file = self.workdir / f"stop-{prefix}"
        load = Load([], [], stop_file)
        for client in self.clients[:clients]:
            history = self.workdir / f"history-{prefix}-{client.name}.jsonl"
            options = ["--workers", str(workers), "--prefix", f"{prefix}-{client.name}",
                       "--pause", str(pause), "--linger", str(linger)]
            if count is not None:
                options += ["--count", str(count)]
            if first is not None:
                options += ["--first", str(first)]
            command = client.command(
                sys.executable, "-m", "chttp_examples.multihost.loadgen",
                *[arg for r in self.receivers for arg in ("--receiver", r.url)],
                "--history", str(history), "--stop-file", str(stop_file), *options)
            load.processes.append(_spawn(command, log=self.workdir / f"{client.name}.log",
                                         ready="started"))
            load.histories.append(history)
        self.loads.append(load)
        return load

    def start_sender(self, host: Host, role: str | None, log: Path, *options: str,
                     module: str = "sender") -> subprocess.Popen[str]:
        """:mod:`.sender` (or ``module``: :mod:`.storm`, which takes no ``role``) on
        ``host``, in a UTS namespace of its own named after the host.

        Its own host name matters: the journal frees a lease of a dead process at once
        only when the owner ran on *this* host; on another host it waits for expiry.
        """
        command = host.command("unshare", "--uts", "--", sys.executable, "-m",
                               f"chttp_examples.multihost.{module}",
                               *([role] if role is not None else []), "--hostname",
                               f"{self.network.tag}-{host.name}",
                               "--journal", self.journal_url(),
                               "--log", str(log), *options)
        process = _spawn(command, log=self.workdir / f"{host.name}.log", ready="ready")
        self.others.append(process)
        return process

    def journal_url(self) -> str:
        """The senders' journal: the application's database, through PgBouncer here."""
        assert self.bouncer is not None and self.db is not None
        return self.bouncer.url(self.db.database, **STORE_OPTIONS)

    def wait_lingering(self, *, timeout: float = 30) -> None:
        """Block until a handler is inside its transaction, sleeping (a probe's ``linger``)."""
        deadline = time.monotonic() + timeout
        host, port = self.primary_address()
        while not query(port, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                        "AND query LIKE 'SELECT pg_sleep%%'", host=host)[0][0]:
            if time.monotonic() > deadline:
                raise TimeoutError("no handler lingering in its transaction")
            time.sleep(0.02)

    def stop_load(self, load: Load, *, timeout: float = 150) -> None:
        """Ask the clients to finish the messages they hold, and wait until they have."""
        load.stop_file.touch()
        for process in load.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            _kill(process)

    def answered(self, load: Load) -> int:
        """How many 2xx answers the clients of ``load`` have seen so far."""
        count = 0
        for path in load.histories:
            if path.exists():
                count += path.read_text().count('"status":200')
        return count

    def wait_answers(self, load: Load, more: int, *, timeout: float = 60) -> None:
        """Block until the clients have seen ``more`` further 2xx answers.

        After every fault here the load comes back within seconds (the clients' backoff
        is capped at 0.5 s, a request's store waits at a few seconds); ``timeout`` is
        only there so that a topology that cannot recover fails instead of hanging. The
        one stall seen past 60 s was such a topology: a restarted PgBouncer that had
        not started (see :meth:`.database.PgBouncer.kill`). The error says which of the
        topology's processes are not running, since that is the usual cause.
        """
        target = self.answered(load) + more
        deadline = time.monotonic() + timeout
        while self.answered(load) < target:
            if time.monotonic() > deadline:
                down = self.not_running()
                raise TimeoutError(
                    f"the load did not reach {target} answers in {timeout:g} s (at "
                    f"{self.answered(load)}); not running: {', '.join(down) or 'none'}")
            time.sleep(0.05)

    def not_running(self) -> list[str]:
        """The topology's long-lived processes that have exited (by role)."""
        down = [f"receiver {r.host.name}" for r in self.receivers
                if r.process is None or r.process.poll() is not None]
        if self.bouncer is not None and (self.bouncer.process is None
                                         or self.bouncer.process.poll() is not None):
            down.append("pgbouncer")
        return down

    def primary_port(self) -> int:
        """The port of whichever server accepts writes now."""
        assert self.db is not None and self.db.standby is not None
        return self.db.primary.port if self.db.primary.running else self.db.standby.port

    def primary_address(self) -> tuple[str, int]:
        """``(host, port)`` of whichever server accepts writes now, reachable from here."""
        return "127.0.0.1", self.primary_port()

    @property
    def database(self) -> str:
        """The application's database name (the one the receivers' store lives in)."""
        assert self.db is not None
        return self.db.database

    def check(self, *loads: Load) -> Report:
        """The history check of ``loads`` against the current primary's final state."""
        import psycopg2

        attempts, gave_up = read_attempts([path for load in loads for path in load.histories])
        host, port = self.primary_address()
        connection = psycopg2.connect(host=host, port=port, user="postgres", dbname=self.database)
        try:
            effects, stored = read_database(connection)
        finally:
            connection.close()
        prefixes = tuple(f"{load.stop_file.name[len('stop-'):]}-" for load in loads)
        effects = {k: v for k, v in effects.items() if k.startswith(prefixes)}
        return check(attempts, effects, stored, gave_up)

    def check_effects(self) -> dict[str, list[str]]:
        """Every effect row on the current primary: message id → nonces."""
        effects: dict[str, list[str]] = {}
        host, port = self.primary_address()
        for message_id, nonce in query(port, "SELECT message_id, nonce FROM mh_effects",
                                       database=self.database, host=host):
            effects.setdefault(message_id, []).append(nonce)
        return effects

    def stop_load_and_check(self, *loads: Load) -> Report:
        for load in loads:
            self.stop_load(load)
        return self.check(*loads)

    # -- teardown ----------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process, remove the servers' files and the network. Idempotent."""
        try:
            for load in self.loads:
                for process in load.processes:
                    _kill(process)
            for process in self.others:
                _kill(process)
            for receiver in self.receivers:
                _kill(receiver.process)
            if self.bouncer is not None:
                self.bouncer.stop()
            if self.db is not None:
                self.db.destroy()
        finally:
            self.network.destroy()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
