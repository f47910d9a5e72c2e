"""A client host: certified POSTs to any receiver, retried with the same id, all recorded.

::

    python -m chttp_examples.multihost.loadgen --receiver URL [--receiver URL …] \
        --history FILE --stop-file PATH [--workers N] [--prefix P]

Each worker sends one message at a time: a fresh id, then attempts — each through the
next receiver in turn, since a load balancer would send a retry anywhere — until an
answer is definitive (docs/protocol.rst §5: 2xx or a 4xx other than 409/429). Connection
errors, timeouts, 409, 429 and 5xx are retried with capped exponential backoff. Every
attempt is appended to ``--history`` as one JSON line and flushed at once, so the
checker (:mod:`.history`) sees even the attempts of a client killed a moment later.

When ``--stop-file`` appears, each worker finishes the message it holds (retrying until
its ``--give-up`` deadline) and stops, so a run ends with no message left in doubt.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import random
import signal
import sys
import threading
import time
from typing import IO, Any, Sequence

import httpx

__all__ = ["main", "is_definitive", "resend"]


def is_definitive(status: int) -> bool:
    """docs/protocol.rst §5: which answers end a send (anything else is retried as is)."""
    if status in (409, 429):
        return False
    return status < 500 or status in (501, 505)


class _History:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.lock:
            self.stream.write(line)
            self.stream.flush()


def _worker(number: int, args: argparse.Namespace, history: _History) -> None:
    receivers = args.receiver
    client = httpx.Client(timeout=httpx.Timeout(args.timeout), limits=httpx.Limits(max_keepalive_connections=len(receivers)))
    sequence = 0
    rng = random.Random(f"{args.prefix}-{number}")
    try:
        while not os.path.exists(args.stop_file) and (args.count is None or sequence < args.count):
            sequence += 1
            message_id = f"{args.prefix}-w{number}-{sequence}"
            content: dict[str, Any] = {"worker": number, "n": sequence, "pad": "x" * args.pad}
            if args.linger:
                content["linger"] = args.linger
            body = json.dumps(content)
            first = rng.randrange(len(receivers)) if args.first is None else args.first
            _send(client, receivers, message_id, body, history, rng, first=first,
                  give_up=args.give_up)
            if args.pause:
                time.sleep(args.pause)
    finally:
        client.close()


def _send(client: httpx.Client, receivers: Sequence[str], message_id: str, body: str,
          history: _History, rng: random.Random, *, first: int, give_up: float) -> None:
    """Send one message until its answer is definitive (or ``give_up`` seconds pass)."""
    deadline = time.time() + give_up
    attempt = 0
    while True:
        target = receivers[(first + attempt) % len(receivers)]
        record: dict[str, Any] = {"id": message_id, "attempt": attempt, "receiver": target,
                                  "t0": time.time()}
        if attempt == 0:
            record["request"] = body
        try:
            response = client.post(f"{target}/effects", content=body, headers={
                "X-Message-ID": message_id, "Content-Type": "application/json"})
        except httpx.HTTPError as error:
            record.update(t1=time.time(), error=type(error).__name__)
        else:
            record.update(t1=time.time(), status=response.status_code,
                          replayed=response.headers.get("Idempotent-Replayed") == "true",
                          body=response.text if response.status_code < 500 else None)
        history.write(record)
        status = record.get("status")
        if status is not None and is_definitive(status):
            return
        attempt += 1
        if time.time() > deadline:
            history.write({"id": message_id, "gave_up": True, "t1": time.time()})
            return
        time.sleep(min(0.5, 0.02 * 2 ** min(attempt, 5)) * (0.5 + rng.random()))


def resend(messages: Sequence[tuple[str, str]], receivers: Sequence[str], history_path: str,
           *, timeout: float = 3.0, give_up: float = 60.0) -> None:
    """Send ``(message_id, body)`` pairs again, as a sender does after a crash that cut it
    off between the receiver's answer and its own journal commit (docs/protocol.rst §5)."""
    rng = random.Random(0)
    with open(history_path, "a") as stream, httpx.Client(timeout=httpx.Timeout(timeout)) as client:
        history = _History(stream)
        for number, (message_id, body) in enumerate(messages):
            _send(client, receivers, message_id, body, history, rng,
                  first=number % len(receivers), give_up=give_up)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.multihost.loadgen")
    parser.add_argument("--receiver", action="append", required=True, help="base URL (repeat)")
    parser.add_argument("--history", required=True, help="JSON-lines file to append to")
    parser.add_argument("--stop-file", required=True, help="stop (after draining) once it exists")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--prefix", default="c")
    parser.add_argument("--timeout", type=float, default=3.0, help="per attempt, seconds")
    parser.add_argument("--give-up", type=float, default=120.0, help="per message, seconds")
    parser.add_argument("--pause", type=float, default=0.0, help="between messages, seconds")
    parser.add_argument("--pad", type=int, default=64, help="request body padding, bytes")
    parser.add_argument("--count", type=int, help="messages per worker (default: until stopped)")
    parser.add_argument("--first", type=int, help="index of the receiver each first attempt uses")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="ask the handler to sleep this long inside its transaction")
    args = parser.parse_args(argv)
    # ``kill -USR1`` writes every worker's stack to stderr (the client host's log).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    with open(args.history, "a") as stream:
        history = _History(stream)
        workers = [threading.Thread(target=_worker, args=(n, args, history), daemon=True)
                   for n in range(args.workers)]
        for worker in workers:
            worker.start()
        print("started", flush=True)
        for worker in workers:
            worker.join()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
