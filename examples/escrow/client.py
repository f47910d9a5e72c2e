"""The demo client: a resumable function that submits a stream of transfers.

::

    python -m chttp_examples.escrow.client --db URL --escrow URL --transfers N --seed S

Each transfer is a certified POST to the escrow, journaled before it leaves. Kill this
process anywhere and start it again: ``journal.resume_all()`` replays the submissions
that were answered (same ids, so the escrow answers from its store and creates nothing
twice) and carries on with the next one.

Starting the stream exactly once is the same problem in miniature, and the journal
answers it: at start-up we resume whatever is open, then start the stream only if the
journal holds no oplog of it at all. An oplog is written with its first send, so "no
oplog" means nothing ever left this process, and starting afresh is safe. (A marker
file written through ``persist()`` would not do: a persist record becomes durable only
with the next send, so a kill in between leaves a marker that no journal backs.)

The transfers are a pure function of ``(seed, ref)`` and need no ``persist``: replaying
them computes the same bodies. One in eight is meant to fail — a leg larger than all the
money there is — and others fail when an account happens to run dry.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import httpx

__all__ = ["LEDGER_ACCOUNTS", "OPENING_BALANCE", "make_transfer", "demo_retry_policy", "main"]

#: The accounts of the two ledgers and what each holds at the start.
LEDGER_ACCOUNTS = {"A": ("alice", "bob", "carol"), "B": ("dave", "erin", "frank")}
OPENING_BALANCE = 1000
#: A leg this large can never be gathered: more than all the money of both ledgers.
IMPOSSIBLE_AMOUNT = 10 * OPENING_BALANCE * sum(len(names) for names in LEDGER_ACCOUNTS.values())
#: The journal name of the resumable function that submits the stream.
STREAM = "chttp_examples.escrow.submit_transfers"


def make_transfer(seed: int, ref: int) -> dict[str, Any]:
    """Transfer ``ref`` of the stream: one contributor and one recipient on each ledger."""
    rng = random.Random(f"{seed}/{ref}")
    gather: list[dict[str, Any]] = [
        {"ledger": name, "account": rng.choice(accounts), "amount": rng.randint(1, 400)}
        for name, accounts in LEDGER_ACCOUNTS.items()
    ]
    rng.shuffle(gather)                      # refusals then happen before and after a gather
    if rng.random() < 1 / 8:
        rng.choice(gather)["amount"] = IMPOSSIBLE_AMOUNT
    total = sum(leg["amount"] for leg in gather)
    first = rng.randint(1, total - 1)
    distribute = [
        {"ledger": name, "account": rng.choice(accounts), "amount": amount}
        for (name, accounts), amount in zip(LEDGER_ACCOUNTS.items(), (first, total - first))
    ]
    return {"ref": ref, "gather": gather, "distribute": distribute}


def demo_retry_policy() -> Any:
    """Retries tuned for a demo whose services come back within a second or so."""
    from chttp_client import RetryPolicy

    return RetryPolicy(initial_backoff=0.05, max_backoff=1.0, timeout=10.0)


def _wait_for_room(escrow_url: str, window: int) -> None:
    """Backpressure: keep at most ``window`` transfers unfinished (plain GET, not state)."""
    while True:
        try:
            summary = httpx.get(f"{escrow_url}/transfers", timeout=2.0).json()
            states = summary["states"]
            if summary["total"] - states.get("completed", 0) - states.get("refunded", 0) < window:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass   # the escrow is restarting
        time.sleep(0.05)


def make_stream_function(journal: Any) -> Any:
    from chttp_client import resumable

    @resumable(journal, name=STREAM)
    def submit_transfers(escrow_url: str, count: int, seed: int, window: int,
                         *, chttp_context: Any) -> list[str]:
        accepted = []
        for ref in range(count):
            if not chttp_context.replaying:     # a replayed step sends nothing: no need to wait
                _wait_for_room(escrow_url, window)
            answer = chttp_context.post(f"{escrow_url}/transfers", json=make_transfer(seed, ref))
            answer.raise_for_status()
            accepted.append(answer.json()["id"])
        return accepted

    return submit_transfers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.escrow.client")
    parser.add_argument("--db", required=True, metavar="URL", help="the client's journal")
    parser.add_argument("--escrow", required=True, metavar="URL")
    parser.add_argument("--transfers", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--window", type=int, default=8, help="transfers in flight at most")
    parser.add_argument("--ready-file", help="touched once the imports are done (for the demo)")
    parser.add_argument("--attempt-log", help="one line per attempt of each certified send")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s client %(name)s %(levelname)s %(message)s")
    from chttp_client import Journal

    journal = Journal(args.db, retry=demo_retry_policy())
    if args.attempt_log:
        from chttp_examples.escrow.serve import log_send_attempts

        log_send_attempts(journal, args.attempt_log)
    submit_transfers = make_stream_function(journal)
    journal.ensure_schema()   # the last of the start-up (it loads the migrations)
    if args.ready_file:       # only now may the chaos count this process as started
        Path(args.ready_file).touch()
    journal.resume_all(timeout=None)       # finish a stream a kill cut off (waiting for it) …
    streams = [oplog for oplog in journal.list() if oplog.function == STREAM]
    if not streams:                        # … or start it, if it never started
        submit_transfers(args.escrow, args.transfers, args.seed, args.window)
        return 0
    unfinished = [oplog for oplog in streams if oplog.state != "done"]
    for oplog in unfinished:
        print(f"client: stream oplog {oplog.id} is {oplog.state}", file=sys.stderr)
    return 1 if unfinished else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
