"""A sender host: a resumable function making certified sends, over a shared journal.

::

    python -m chttp_examples.multihost.sender start  --journal URL --receiver URL --log FILE
    python -m chttp_examples.multihost.sender resume --journal URL --log FILE [--until-done]

``start`` runs :func:`transfer` (``--steps`` certified POSTs to ``/effects``; the one
numbered ``--linger-step`` asks its handler to linger, so the process can be killed
while that send is certainly in flight). ``resume`` calls ``Journal.resume_all()`` every
``--every`` seconds until it has finished an oplog or finds none open any more (the
owner finished it: ``--until-done``), or once.

Both log, one JSON line each, flushed: every HTTP request the journal's client makes
(time, this host's name, the message id) and every resume outcome. Two of these on two
hosts — two namespaces with two host names (``unshare --uts``) — over one PostgreSQL
journal show the lease at work: the second takes the oplog over only once the first's
lease has expired, never while it runs, and sends the in-flight step under its old id.

``--clock-skew S`` shifts this host's journal clock by ``S`` seconds
(``Journal(clock=…)``), so two hosts whose clocks disagree can be tested. Only the
journal's clock moves — a network namespace has no clock of its own (Linux time
namespaces shift the monotonic and boot clocks, never the real-time clock). The lease
is not stamped with it: its deadline is the database's clock (chttp_client.leases), and
the skew only shifts the times the journal records (created, updated, first sent).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import httpx

__all__ = ["journal_outages", "SenderLog", "set_hostname", "main", "FUNCTION_NAME"]

#: The registered name of the resumable function (the same on every host).
FUNCTION_NAME = "chttp_examples.multihost.transfer"


class SenderLog:
    def __init__(self, path: str, skew: float = 0.0) -> None:
        self.stream = open(path, "a")
        self.lock = threading.Lock()
        self.host = socket.gethostname()
        self.skew = skew

    def write(self, event: str, **fields: Any) -> None:
        now = time.time()
        # "t" is real time (comparable across hosts); "clock" is this host's journal clock.
        record = {"t": now, "clock": now + self.skew, "host": self.host, "pid": os.getpid(),
                  "event": event, **fields}
        with self.lock:
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()


def _journal(args: argparse.Namespace, log: SenderLog) -> Any:
    from chttp_client import Journal, RetryPolicy, resumable

    def on_request(request: httpx.Request) -> None:
        log.write("request", method=request.method, url=str(request.url),
                  id=request.headers.get("X-Message-ID") or request.headers.get("Idempotency-Key"))

    client = httpx.Client(timeout=httpx.Timeout(10.0), event_hooks={"request": [on_request]})
    skew = timedelta(seconds=args.clock_skew)

    def clock() -> datetime:
        return datetime.now(timezone.utc) + skew

    # The heartbeat renews the lease in real time all along the run (a third of it by
    # default: chttp_client.lease_timing); the lease is how long a dead host holds it.
    heartbeat = args.heartbeat if args.heartbeat is not None else args.lease / 3
    journal = Journal(args.journal, http_client=client, lease=timedelta(seconds=args.lease),
                      heartbeat=timedelta(seconds=heartbeat), retry=RetryPolicy(), clock=clock)

    def transfer(receiver: str, steps: int, linger_step: int, *, chttp_context: Any) -> list[str]:
        nonces = []
        for step in range(steps):
            linger = args.linger if step == linger_step else 0
            answer = chttp_context.post(f"{receiver}/effects", json={"step": step, "linger": linger})
            nonces.append(answer.json()["nonce"])
        return nonces

    return journal, resumable(journal, name=FUNCTION_NAME)(transfer)


def journal_outages() -> tuple[type[BaseException], ...]:
    """What ``resume_all()`` raises while the journal's database is unreachable.

    ``JournalUnavailable`` as documented; and, found by tests/multihost/test_patroni.py,
    the driver's ``OperationalError`` raised untranslated from the pending
    acknowledgements' claim at the start of ``resume_all()`` (not yet wrapped).
    """
    from sqlalchemy.exc import OperationalError

    from chttp_client import JournalUnavailable

    return JournalUnavailable, OperationalError


def set_hostname(name: str) -> None:
    """Name this host, refusing to rename the machine: only in a UTS namespace of its own
    (``unshare --uts`` executes us, so our parent is still in the machine's namespace)."""
    if os.readlink("/proc/self/ns/uts") == os.readlink(f"/proc/{os.getppid()}/ns/uts"):
        raise SystemExit("--hostname needs a UTS namespace of its own (unshare --uts)")
    socket.sethostname(name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.multihost.sender")
    parser.add_argument("role", choices=["start", "resume"])
    parser.add_argument("--journal", required=True, help="the shared journal's database URL")
    parser.add_argument("--log", required=True, help="JSON-lines file to append to")
    parser.add_argument("--receiver", help="base URL of a receiver (start)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--linger-step", type=int, default=2)
    parser.add_argument("--linger", type=float, default=2.0)
    parser.add_argument("--lease", type=float, default=3.0, help="journal lease, seconds")
    parser.add_argument("--heartbeat", type=float, default=None,
                        help="seconds between lease renewals (default: a third of --lease)")
    parser.add_argument("--every", type=float, default=0.2, help="resume: seconds between tries")
    parser.add_argument("--until-done", action="store_true")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--clock-skew", type=float, default=0.0,
                        help="seconds added to this host's journal clock (may be negative)")
    parser.add_argument("--hostname", help="this host's name; only in a UTS namespace of its own "
                                           "(run under `unshare --uts`)")
    args = parser.parse_args(argv)
    if args.hostname:
        set_hostname(args.hostname)
    log = SenderLog(args.log, args.clock_skew)
    journal, transfer = _journal(args, log)
    print("ready", flush=True)
    try:
        if args.role == "start":
            log.write("start")
            try:
                result = transfer(args.receiver, args.steps, args.linger_step)
            except Exception as error:
                log.write("error", error=type(error).__name__, detail=str(error))
                raise
            log.write("done", result=result)
            return 0
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                outcomes = journal.resume_all(timeout=None)   # each round waits for its runs
            except journal_outages() as error:
                # The journal's database between two primaries (a Patroni switchover: every
                # node refuses writes for a moment): try again next round, as a resumer
                # started by a supervisor would after a restart.
                log.write("unavailable", error=type(error).__name__, detail=str(error)[:200])
                if time.monotonic() > deadline:
                    return 1
                time.sleep(args.every)
                continue
            if args.until_done and not outcomes:  # its owner finished it: nothing to wait for
                log.write("idle")
                return 0
            for outcome in outcomes:
                log.write("resume", oplog=outcome.oplog_id, status=outcome.status,
                          result=outcome.value if outcome.status == "done" else None)
                if outcome.status == "done":
                    return 0
            if not args.until_done or time.monotonic() > deadline:
                return 0 if not args.until_done else 1
            time.sleep(args.every)
    finally:
        journal.close()
        log.stream.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
