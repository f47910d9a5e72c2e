"""The takeover scenario: how soon a sender host's SIGKILLed workers are taken over by another.

A two-"host" kill storm over one journal: worker processes under the host name
``bench-host-a`` (``socket.gethostname`` replaced, so no other process can check their
pids — as a worker in another container, pod or machine) each run ``--functions``
resumable functions at once, each making one certified POST that the receiver answers
only after ``LINGER`` seconds (its handler has committed by then). Once every handler
ran, every worker is SIGKILLed at once. A resumer process under ``bench-host-b`` calls
``resume_all()`` all along; each oplog's *takeover time* is from the kill to B's resend
of its in-flight message (same id: the receiver answers it from its store); B runs from
before the kill, as a second host would. Also
checked: every handler ran once, and B resent exactly the ids A had recorded.

::

    python -m bench.takeover [--heartbeat 5] [--workers 2] [--functions 8] [--rounds 3]
                             [--journal URL] [--receiver-db URL]

``python -m bench --only takeover`` runs it on the bench's PostgreSQL cluster. A lease is
``3 x heartbeat`` (chttp_client.lease_timing); a takeover should come between
``lease - heartbeat`` (the lease was last renewed a heartbeat before the kill) and
``lease`` plus the resumer's polling. With the old fixed lease it was 10 minutes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from chttp_client.lease_timing import DEFAULT_HEARTBEAT

if TYPE_CHECKING:
    from bench.cluster import BenchDatabase
    from bench.scenarios import Options

__all__ = ["run_takeover", "storm", "main"]

ROOT = Path(__file__).resolve().parent.parent
NAME = "bench.takeover.transfer"
#: How long the receiver holds each first answer back: the workers die meanwhile.
LINGER = 30.0


def transfer(base_url: str, *, chttp_context: Any) -> int:
    return int(chttp_context.post(f"{base_url}/effects", json={}).status_code)


class _Receiver:
    """A certified receiver that records when each message id arrived, and lingers."""

    def __init__(self, db_url: str) -> None:
        import webob
        from sqlalchemy import Column, Integer, MetaData, String, Table, insert

        from chttp_server import CertifiedMiddleware, Resource

        metadata = MetaData()
        self.effects = Table("bench_takeover_effects", metadata,
                             Column("id", Integer, primary_key=True, autoincrement=True),
                             Column("message_id", String(128)))
        effects = self.effects

        class Effects(Resource):
            def handle_post(self, req: Any) -> Any:
                req.chttp.connection.execute(insert(effects).values(message_id=req.chttp.message_id))
                return webob.Response(status=201, json_body={"ok": True})

        class Root(Resource):
            children = {"effects": Effects()}

        self.app = CertifiedMiddleware(Root(), db_url=db_url, upgrade_schema=True)
        metadata.create_all(self.app.engine)
        self.lock = threading.Lock()
        self.arrivals: dict[str, list[float]] = {}
        self.handled = threading.Semaphore(0)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        key = environ.get("HTTP_X_MESSAGE_ID", "")
        if environ.get("REQUEST_METHOD") != "POST" or not key:
            return iter(self.app(environ, start_response))
        with self.lock:
            first = key not in self.arrivals
            self.arrivals.setdefault(key, []).append(time.time())
        body = b"".join(self.app(environ, start_response))
        if first:
            self.handled.release()
            time.sleep(LINGER)        # the worker is killed meanwhile
        return iter([body])

    def handler_runs(self) -> dict[str, int]:
        from sqlalchemy import func, select

        with self.app.engine.connect() as connection:
            rows = connection.execute(select(self.effects.c.message_id, func.count())
                                      .group_by(self.effects.c.message_id))
            return {message_id: int(count) for message_id, count in rows}


class _Quiet(WSGIRequestHandler):
    def log_message(self, *_args: Any) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _host(name: str) -> None:
    socket.gethostname = lambda: name  # type: ignore[assignment]


def _child(role: str, journal_url: str, base_url: str, heartbeat: float, functions: int) -> int:
    """A worker (host A: ``functions`` runs at once) or the resumer (host B)."""
    from chttp_client import Journal, resumable

    _host("bench-host-a" if role == "worker" else "bench-host-b")
    logging.getLogger("chttp_client").setLevel(logging.ERROR)  # "busy" until the takeover
    journal = Journal(journal_url, heartbeat=timedelta(seconds=heartbeat))
    run = resumable(journal, name=NAME)(transfer)
    if role == "worker":
        threads = [threading.Thread(target=run, args=(base_url,), daemon=True) for _ in range(functions)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return 0
    while True:                       # the resumer: until the parent stops it
        journal.resume_all(timeout=None)
        time.sleep(0.05)


def storm(journal_url: str, receiver_db: str, *, heartbeat: float = 1.0, workers: int = 2,
          functions: int = 8) -> dict[str, Any]:
    """One kill storm; returns the takeover times (seconds) and the checks."""
    from sqlalchemy import create_engine, text

    receiver = _Receiver(receiver_db)
    server = make_server("127.0.0.1", 0, receiver, server_class=_ThreadingServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    command = [sys.executable, "-m", "bench.takeover", "--child"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [journal_url, base, str(heartbeat), str(functions)]
    processes = [subprocess.Popen([*command, "worker", *args], cwd=ROOT, env=env)
                 for _ in range(workers)]
    # Host B resumes all along (refused, busy, while A's workers live).
    resumer = subprocess.Popen([*command, "resumer", *args], cwd=ROOT, env=env)
    try:
        for _ in range(workers * functions):
            if not receiver.handled.acquire(timeout=120):
                raise RuntimeError("the workers' sends never reached the receiver")
        for process in processes:
            process.send_signal(signal.SIGKILL)
        killed = time.time()
        for process in processes:
            process.wait()
        engine = create_engine(journal_url)
        give_up = time.monotonic() + 300
        while True:
            with engine.connect() as connection:
                left = connection.execute(text("SELECT count(*) FROM chttp_oplogs "
                                               "WHERE state = 'open'")).scalar_one()
            if not left:
                break
            if time.monotonic() > give_up:
                raise RuntimeError(f"{left} oplogs never taken over")
            time.sleep(0.05)
        engine.dispose()
    finally:
        for process in [*processes, resumer]:
            if process.poll() is None:
                process.kill()
                process.wait()
        server.shutdown()
        server.server_close()  # the listening socket: left to GC, a ResourceWarning in a later test
    arrivals = dict(receiver.arrivals)
    runs = receiver.handler_runs()
    receiver.app.engine.dispose()
    takeovers = sorted(times[1] - killed for times in arrivals.values() if len(times) > 1)
    return {
        "heartbeat_s": heartbeat, "lease_s": 3 * heartbeat, "oplogs": workers * functions,
        "takeovers_s": takeovers,
        "resent_same_ids": len(takeovers) == len(arrivals) == workers * functions,
        "handler_runs_once": [runs.get(key, 0) for key in arrivals] == [1] * len(arrivals),
    }


def run_takeover(db: BenchDatabase, options: Options) -> dict[str, object]:
    """``python -m bench --only takeover``: storms on the cluster, one database pair each."""
    times: list[float] = []
    checks = True
    rounds = options.rounds
    heartbeat = DEFAULT_HEARTBEAT.total_seconds()
    for index in range(rounds):
        result = storm(db.cluster.create_database(f"bench_takeover_j{index}"),
                       db.cluster.create_database(f"bench_takeover_r{index}"), heartbeat=heartbeat)
        times += result["takeovers_s"]
        checks = checks and result["resent_same_ids"] and result["handler_runs_once"]
    return _summary(times, heartbeat, rounds, checks)


def _summary(times: list[float], heartbeat: float, rounds: int, checks: bool) -> dict[str, object]:
    return {
        "rounds": rounds, "oplogs": len(times), "heartbeat_s": heartbeat, "lease_s": 3 * heartbeat,
        "median_s": statistics.median(times) if times else float("nan"),
        "min_s": min(times, default=float("nan")), "max_s": max(times, default=float("nan")),
        "exactly_once": checks,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        role, journal_url, base, heartbeat, functions = argv[1:]
        return _child(role, journal_url, base, float(heartbeat), int(functions))
    parser = argparse.ArgumentParser(prog="python -m bench.takeover", description=__doc__)
    parser.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT.total_seconds(),
                        help="seconds (default: the journal's, 5; the lease is 3 x)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes on host A")
    parser.add_argument("--functions", type=int, default=8, help="runs in flight per worker")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--journal", help="journal database URL (default: a fresh SQLite file "
                                          "per round)")
    parser.add_argument("--receiver-db", help="receiver database URL (default: SQLite)")
    args = parser.parse_args(argv)
    times: list[float] = []
    checks = True
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.rounds):
            journal = args.journal or f"sqlite:///{scratch}/journal{index}.db"
            receiver = args.receiver_db or f"sqlite:///{scratch}/receiver{index}.db"
            result = storm(journal, receiver, heartbeat=args.heartbeat, workers=args.workers,
                           functions=args.functions)
            times += result["takeovers_s"]
            checks = checks and result["resent_same_ids"] and result["handler_runs_once"]
            print(f"round {index + 1}: {len(result['takeovers_s'])} oplogs taken over in "
                  f"{min(result['takeovers_s'], default=0):.2f}-{max(result['takeovers_s'], default=0):.2f}"
                  f" s; same ids {result['resent_same_ids']}, handlers once "
                  f"{result['handler_runs_once']}", flush=True)
    print(takeover_line(_summary(times, args.heartbeat, args.rounds, checks)))
    return 0 if checks else 1


def takeover_line(takeover: dict[str, object]) -> str:
    """The report's row."""
    if "skipped" in takeover:
        return f"takeover: skipped: {takeover['skipped']}"
    return (f"takeover: {takeover['oplogs']} oplogs of SIGKILLed workers on another host "
            f"({takeover['rounds']} storm(s)), heartbeat {takeover['heartbeat_s']:.1f} s, lease "
            f"{takeover['lease_s']:.1f} s: taken over {takeover['min_s']:.2f} / "
            f"{takeover['median_s']:.2f} / {takeover['max_s']:.2f} s after the kill "
            f"(min/median/max); exactly once: {takeover['exactly_once']}")


if __name__ == "__main__":
    sys.exit(main())
