"""``chttp-server demo``: the escrow under fire, then an audit of every coin.

Starts two ledgers and the escrow as separate server processes on loopback ports, each
with its own database, and a client process that submits a stream of transfers, while
a chaos loop SIGKILLs random processes — the client included — at random moments and
starts them again. When every transfer has finished, everything stops and
:func:`~chttp_examples.escrow.audit.audit` reads the databases: money conserved, no
account negative, every transfer applied exactly once on every ledger. A run stopped by
its time limit is audited too, for what holds at every instant (nothing lost, nothing
applied twice, the escrow holding the difference), and reported as unfinished rather than
wrong. Exit status: 0 passed, 1 the audit found something wrong, 3 the time limit came
first and nothing was wrong.

Deliveries and replays are counted from the services' access logs (one line per
certified request that got an answer): a delivery answered ``replayed`` is a retry that
found its message already processed — a duplicate that plain HTTP would have applied
twice.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TextIO

import httpx

from chttp_examples.escrow.audit import AuditResult, audit
from chttp_examples.escrow.chaos import Chaos, Service, wait_for_port
from chttp_examples.escrow.cli import DEFAULT_KILL_RATE, DEFAULT_TRANSFERS
from chttp_examples.escrow.client import LEDGER_ACCOUNTS, OPENING_BALANCE
from chttp_examples.escrow.escrow import TERMINAL_STATES, init_escrow
from chttp_examples.escrow.ledger import init_ledger
from chttp_examples.escrow.progress import ProgressBar

__all__ = ["Databases", "DemoReport", "run_demo", "run", "postgres_databases",
           "EXIT_PASSED", "EXIT_WRONG", "EXIT_UNFINISHED"]


@dataclass(frozen=True)
class Databases:
    """One database per service: ledger name → URL, the escrow's, the client's journal."""

    ledgers: Mapping[str, str]
    escrow: str
    client: str

    @classmethod
    def sqlite(cls, directory: Path) -> Databases:
        return cls(
            ledgers={name: f"sqlite:///{directory / f'ledger-{name}.db'}" for name in LEDGER_ACCOUNTS},
            escrow=f"sqlite:///{directory / 'escrow.db'}",
            client=f"sqlite:///{directory / 'client.db'}",
        )


@dataclass
class Deliveries:
    """What one service's access log says: certified requests answered, and how."""

    answered: int = 0
    replayed: int = 0
    messages: int = 0
    server_errors: int = 0

    @classmethod
    def read(cls, path: Path) -> Deliveries:
        result, ids = cls(), set()
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) != 6:
                    continue   # a line cut short by SIGKILL
                result.answered += 1
                ids.add(parts[3])
                result.replayed += parts[5] == "replayed"
                result.server_errors += parts[4].startswith("5")
        result.messages = len(ids)
        return result


@dataclass
class Attempts:
    """What one sender's attempt log says: attempts, and the messages they carried."""

    attempts: int = 0
    messages: int = 0

    @property
    def retries(self) -> int:
        return self.attempts - self.messages

    @classmethod
    def read(cls, path: Path) -> Attempts:
        ids = path.read_text(encoding="utf-8").split() if path.exists() else []
        return cls(attempts=len(ids), messages=len(set(ids)))


#: Exit statuses of ``chttp-server demo`` (2 is a usage error, as for every command).
EXIT_PASSED = 0
EXIT_WRONG = 1
EXIT_UNFINISHED = 3


@dataclass
class DemoReport:
    requested: int
    seed: int
    kill_rate: float
    timeout: float = 600.0
    elapsed: float = 0.0
    #: Kills per second achieved (lower than requested: nobody is killed while starting).
    achieved_rate: float = 0.0
    finished: bool = False
    kills: Counter[str] = field(default_factory=Counter)
    crashes: Counter[str] = field(default_factory=Counter)
    deliveries: dict[str, Deliveries] = field(default_factory=dict)
    attempts: dict[str, Attempts] = field(default_factory=dict)
    audit: AuditResult = field(default_factory=AuditResult)
    db_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.finished and self.audit.ok

    @property
    def exit_status(self) -> int:
        """0 passed; 1 the audit found something wrong; 3 time limit, nothing wrong."""
        if not self.audit.ok:
            return EXIT_WRONG
        return EXIT_PASSED if self.finished else EXIT_UNFINISHED

    def render(self) -> str:
        states = self.audit.states
        killed = ", ".join(f"{name} {n}" for name, n in sorted(self.kills.items()))
        rate = (f"kill rate {self.kill_rate}/s requested, {self.achieved_rate:.1f}/s achieved"
                if self.kill_rate > 0 else "no kills")
        lines = [
            "",
            f"escrow demo — seed {self.seed}, {rate}, {self.elapsed:.1f}s",
            f"  transfers   requested {self.requested}, accepted {self.audit.transfers}, "
            f"completed {states.get('completed', 0)}, refunded {states.get('refunded', 0)}"
            + ("" if self.finished else f", in flight {self.audit.in_flight}"),
            f"  killed      {sum(self.kills.values())} processes (SIGKILL)"
            + (f": {killed}" if killed else ""),
        ]
        lines += self._refund_lines()
        if self.crashes:
            lines.append("  crashed     " + ", ".join(f"{n} {c}" for n, c in sorted(self.crashes.items())))
        lines += self._traffic_lines()
        lines += self._audit_lines()
        if self.db_dir is not None:
            lines.append(f"  databases and logs kept in {self.db_dir}")
        return "\n".join(lines)

    def _refund_lines(self) -> list[str]:
        """Why the refunded transfers were refunded: the client makes one in eight fail on
        purpose, and random amounts drain accounts, so more than an eighth are refunded."""
        reasons = self.audit.refund_reasons
        if not reasons:
            return []
        parts = []
        if reasons["meant to fail"]:
            parts.append(f"{reasons['meant to fail']} meant to fail (one in eight asks more "
                         "than there is)")
        if reasons["ran dry"]:
            parts.append(f"{reasons['ran dry']} found an account short (402 insufficient funds)")
        parts += [f"{count} {reason}" for reason, count in sorted(reasons.items())
                  if reason not in ("meant to fail", "ran dry")]
        indent = " " * 14
        lines = [f"{part}," for part in parts[:-1]] + parts[-1:]
        return [f"  refunds     {sum(reasons.values())}: {lines[0]}"] + [
            f"{indent}{line}" for line in lines[1:]]

    def _traffic_lines(self) -> list[str]:
        indent = " " * 14
        sent = sum(a.attempts for a in self.attempts.values())
        answered = sum(d.answered for d in self.deliveries.values())
        replayed = sum(d.replayed for d in self.deliveries.values())
        messages = sum(d.messages for d in self.deliveries.values())
        return [
            f"  senders     {sent} attempts for {sum(a.messages for a in self.attempts.values())} "
            f"certified messages: {sum(a.retries for a in self.attempts.values())} retries ("
            + ", ".join(f"{name} {a.retries}" for name, a in sorted(self.attempts.items())) + ")",
            # Not "answers - messages": a 409/503 answer is not a replay, and a process
            # killed between answering and logging loses its line.
            f"  receivers   {answered} answers logged for {messages} messages; {replayed} "
            f"{'was a duplicate' if replayed == 1 else 'were duplicates'} answered from\n"
            f"{indent}the store (Idempotent-Replayed) instead of "
            f"running again\n{indent}("
            + ", ".join(f"{name} {d.replayed}" for name, d in sorted(self.deliveries.items()))
            + ")",
        ]

    def _audit_lines(self) -> list[str]:
        indent = " " * 14
        result = self.audit
        operations = f"{result.operations} ledger operation{_s(result.operations)}"
        if self.finished:
            lines = [(f"  audit       money at the start {result.total_before}, now "
                      f"{result.total_after} in the ledgers; {operations}")]
        else:
            lines = [(f"  audit       money at the start {result.total_before}, now "
                      f"{result.total_after} in the ledgers + {result.held} held by the escrow;"),
                     f"{indent}{operations}"]
        if not result.ok:
            lines.append(f"{indent}FAILED ({len(result.failures)} problems):")
            lines += [f"    ! {failure}" for failure in result.failures[:20]]
        elif self.finished:
            lines.append(f"{indent}PASSED: every transfer applied exactly once on every ledger, "
                         "no account negative")
        else:
            lines += [f"{indent}{text}" for text in (
                (f"UNFINISHED: the {self.timeout:.0f}s time limit came first, with "
                 f"{result.in_flight} transfer{_s(result.in_flight)} in flight and"),
                (f"{result.not_submitted} not yet submitted. Nothing was lost or duplicated: "
                 "every ledger"),
                "operation so far was applied at most once, and the money the escrow",
                "holds makes up the difference. Allow more time (--timeout) or fewer",
                "kills (--kill-rate).",
            )]
        return lines


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _poll_escrow(url: str) -> dict[str, Any] | None:
    try:
        return dict(httpx.get(f"{url}/transfers", timeout=1.0).json())
    except (httpx.HTTPError, ValueError):
        return None


def run_demo(
    *,
    # Transfers the client submits.
    transfers: int = DEFAULT_TRANSFERS,
    # Mean SIGKILLs per second over all processes; 0 for a calm run.
    kill_rate: float = DEFAULT_KILL_RATE,
    # Seeds the transfers and the chaos; None picks one (printed in the report).
    seed: int | None = None,
    # Where the databases and logs go; None: a temporary directory, removed if all went well.
    db_dir: Path | None = None,
    # The databases to use instead of SQLite files in db_dir (e.g. PostgreSQL).
    databases: Databases | None = None,
    # Transfers the client keeps unfinished at most.
    window: int = 8,
    # Give up (and fail) after this many seconds.
    timeout: float = 600.0,
    stream: TextIO = sys.stderr,
    # Open the web console on the escrow's store and the client's journal while it runs.
    console: bool = False,
) -> DemoReport:
    seed = random.SystemRandom().randrange(10**6) if seed is None else seed
    keep = db_dir is not None
    directory = Path(db_dir) if db_dir is not None else Path(tempfile.mkdtemp(prefix="chttp-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise SystemExit(f"--db-dir {directory} is not empty; give a new or empty directory")
    databases = databases or Databases.sqlite(directory)
    report = DemoReport(requested=transfers, seed=seed, kill_rate=kill_rate, timeout=timeout)
    rng = random.Random(seed)

    balances = {name: {account: OPENING_BALANCE for account in accounts}
                for name, accounts in LEDGER_ACCOUNTS.items()}
    for name, url in databases.ledgers.items():
        init_ledger(url, balances[name])
    init_escrow(databases.escrow)

    from chttp_server.testing import free_port

    python = sys.executable
    module = "chttp_examples.escrow"
    ports = {name: free_port() for name in databases.ledgers}
    escrow_port = free_port()
    escrow_url = f"http://127.0.0.1:{escrow_port}"
    services: list[Service] = []
    for name, url in databases.ledgers.items():
        services.append(Service(
            f"ledger-{name}",
            [python, "-m", f"{module}.serve", "ledger", "--db", url, "--port", str(ports[name]),
             "--access-log", str(directory / f"ledger-{name}.access")],
            directory / f"ledger-{name}.log", port=ports[name]))
    services.append(Service(
        "escrow",
        [python, "-m", f"{module}.serve", "escrow", "--db", databases.escrow,
         "--port", str(escrow_port), "--access-log", str(directory / "escrow.access"),
         "--attempt-log", str(directory / "escrow.attempts")]
        + [arg for name in databases.ledgers
           for arg in ("--ledger", f"{name}=http://127.0.0.1:{ports[name]}")],
        directory / "escrow.log", port=escrow_port))
    client = Service(
        "client",
        [python, "-m", f"{module}.client", "--db", databases.client, "--escrow", escrow_url,
         "--transfers", str(transfers), "--seed", str(seed), "--window", str(window),
         "--ready-file", str(directory / "client.ready"),
         "--attempt-log", str(directory / "client.attempts")],
        directory / "client.log", ready_file=directory / "client.ready", restart_until_success=True)
    services.append(client)

    console_process = None
    if console:
        from chttp_server.console.cli import ConsoleProcess

        # The escrow's database holds both its message store and its journal.
        console_process = ConsoleProcess(db=databases.escrow, journal=databases.escrow)
        print(f"console: {console_process.url}  (the escrow's messages and oplogs, "
              "open while the demo runs)", file=stream, flush=True)
    bar = ProgressBar(transfers, stream=stream)
    chaos = Chaos(services, kill_rate, rng, on_event=lambda text: None)
    started = time.monotonic()
    try:
        for service in services[:-1]:
            service.start()
        for service in services[:-1]:
            wait_for_port(service.port or 0, service=service)
        client.start()
        chaos.start()
        summary: dict[str, Any] = {}
        done = 0
        while time.monotonic() - started < timeout:
            summary = _poll_escrow(escrow_url) or summary
            states = summary.get("states", {})
            done = sum(states.get(state, 0) for state in TERMINAL_STATES)
            kills = len(chaos.kills)
            bar.update(done, f"completed {states.get('completed', 0)} refunded "
                             f"{states.get('refunded', 0)} | kills {kills} | "
                             f"{time.monotonic() - started:.0f}s")
            if client.finished and summary.get("total") == transfers and done == transfers:
                report.finished = True
                break
            time.sleep(0.2)
        bar.close(done, "finished" if report.finished else "TIMED OUT")
    finally:
        chaos.stop()
        for service in services:
            service.stop()
        if console_process is not None:
            console_process.stop()
        report.elapsed = time.monotonic() - started
        report.achieved_rate = chaos.achieved_rate
    for _, name in chaos.kills:
        report.kills[name] += 1
    for service in services:
        if service.failures:
            report.crashes[service.name] = service.failures
    for service in services[:-1]:
        report.deliveries[service.name] = Deliveries.read(directory / f"{service.name}.access")
    for name in ("escrow", "client"):
        report.attempts[name] = Attempts.read(directory / f"{name}.attempts")
    report.audit = audit(databases.ledgers, databases.escrow, requested=transfers,
                         finished=report.finished)
    if keep or not report.ok:
        report.db_dir = directory
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return report


# -- the command line ------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; the exit status is :attr:`DemoReport.exit_status`."""
    if args.db_dir is not None and args.db_dir.exists() and any(args.db_dir.iterdir()):
        print(f"chttp-server: error: --db-dir {args.db_dir} is not empty (give a new or "
              "empty directory)", file=sys.stderr)
        return 2
    with _maybe_postgres(args.postgres) as databases:
        report = run_demo(transfers=args.transfers, kill_rate=args.kill_rate, seed=args.seed,
                          db_dir=args.db_dir, databases=databases, timeout=args.timeout,
                          console=args.console)
    print(report.render())
    return report.exit_status


class _maybe_postgres:
    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted
        self.cluster: Any = None

    def __enter__(self) -> Databases | None:
        if not self.wanted:
            return None
        from chttp_server.testing import PostgresCluster

        self.cluster = PostgresCluster().start()
        return postgres_databases(self.cluster.create_database)

    def __exit__(self, *_exc: Any) -> None:
        if self.cluster is not None:
            self.cluster.destroy()


def postgres_databases(create_database: Any, prefix: str = "escrow_demo") -> Databases:
    """One fresh PostgreSQL database per service, made with ``create_database(name) -> URL``."""
    return Databases(
        ledgers={name: create_database(f"{prefix}_ledger_{name.lower()}") for name in LEDGER_ACCOUNTS},
        escrow=create_database(f"{prefix}_escrow"),
        client=create_database(f"{prefix}_client"),
    )
