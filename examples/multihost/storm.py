"""A sender host running a storm of resumable functions over a shared journal.

::

    python -m chttp_examples.multihost.storm --journal URL --log FILE --receiver URL ... \\
        --functions N --first K [--workers W] [--lease S]

Each host calls :func:`deliver` for its own keys (``--first`` … ``--first + N - 1``) on
``--workers`` threads, and all along calls ``Journal.resume_all()``, so it also finishes
the functions of the *other* host (or its own) whose run was cut off — a run that died
of a journal outage mid-function (a Patroni failover) leaves its oplog open with its
lease held until the lease expires; whichever host resumes it then replays the recorded
steps and sends the in-flight message again under its recorded id.

:func:`deliver` persists a value (a random token: what a second run of the function
would draw differently) and posts it, with its key, as a certified send to one of the
receivers; it returns the token, the receiver's nonce and the message id. If a function
ever ran twice, its key would have two effect rows at the receiver; if a resume drew a
new token, the message id would carry a second body.

The host stops once its own calls have returned (or failed) and the journal holds no
open oplog of the function (both hosts' work is done), or at ``--timeout``. It logs
one JSON line per event (as :mod:`.sender`): ``call-done`` / ``call-error`` of its own
calls, ``call-again`` when a call must be made again (the journal was unavailable
before its oplog was created: nothing recorded, nothing sent), ``call-already-created``
when the call made again found its oplog there (the first write's COMMIT had been made
though its answer was lost: ``JournalUnavailable.created`` said false; the oplog is left
to ``resume_all()``), ``resume`` outcomes, ``unavailable`` when ``resume_all()`` found the journal's
database gone, and one ``response`` line per HTTP answer (status, message id) with a
``request`` line per request.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Sequence

import httpx

from chttp_examples.multihost.sender import journal_outages, SenderLog, set_hostname

__all__ = ["main", "STORM_FUNCTION"]

#: The registered name of the storm's resumable function (the same on every host).
STORM_FUNCTION = "chttp_examples.multihost.deliver"


def _open_left(journal: Any) -> int:
    """How many oplogs of the storm's function are still open (any host's)."""
    return sum(1 for info in journal.list_open() if info.function == STORM_FUNCTION)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.multihost.storm")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--receiver", action="append", required=True)
    parser.add_argument("--functions", type=int, default=100)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--lease", type=float, default=6.0)
    parser.add_argument("--linger-every", type=int, default=20,
                        help="every n-th function's handler lingers --linger s in its transaction")
    parser.add_argument("--linger", type=float, default=1.0)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between resume_all()")
    parser.add_argument("--timeout", type=float, default=150.0)
    parser.add_argument("--hostname")
    args = parser.parse_args(argv)
    if args.hostname:
        set_hostname(args.hostname)
    # resume_all() warns for every oplog another live run holds ("busy"): expected here.
    logging.basicConfig(level=logging.ERROR)
    log = SenderLog(args.log)

    from sqlalchemy.exc import IntegrityError

    from chttp_client import Journal, JournalUnavailable, RetryPolicy, resumable

    def on_request(request: httpx.Request) -> None:
        log.write("request", method=request.method,
                  id=request.headers.get("X-Message-ID") or request.headers.get("Idempotency-Key"))

    def on_response(response: httpx.Response) -> None:
        log.write("response", method=response.request.method, status=response.status_code,
                  id=response.request.headers.get("X-Message-ID"))

    client = httpx.Client(timeout=httpx.Timeout(5.0),
                          event_hooks={"request": [on_request], "response": [on_response]})
    # Short backoff (a failover lasts seconds); a 5 s attempt timeout as the clients'.
    retry = RetryPolicy(initial_backoff=0.2, max_backoff=1.0, timeout=5.0)
    journal = Journal(args.journal, http_client=client, lease=timedelta(seconds=args.lease),
                      heartbeat=timedelta(seconds=args.lease / 3), retry=retry)

    def deliver(receiver: str, key: int, linger: float, *, chttp_context: Any) -> dict[str, Any]:
        token = chttp_context.persist(uuid.uuid4().hex)
        answer = chttp_context.post(f"{receiver}/effects",
                                    json={"function": key, "token": token, "linger": linger})
        body = answer.json()
        return {"key": key, "token": token, "nonce": body["nonce"], "message_id": body["message_id"]}

    # Registered for resume_all(); called through journal.run() with an oplog id of the
    # key's own (below), not through the decorated function.
    resumable(journal, name=STORM_FUNCTION)(deliver)
    keys = range(args.first, args.first + args.functions)

    def call(key: int) -> None:
        receiver = args.receiver[key % len(args.receiver)]
        linger = args.linger if args.linger_every and key % args.linger_every == 0 else 0.0
        while True:
            try:
                # The oplog's id is the key's: a call made again after a first write whose
                # COMMIT lost its answer (made all the same) finds the row there instead of
                # starting a second oplog — a second run of the function.
                result = journal.run(STORM_FUNCTION, 1, deliver, (receiver, key, linger), {},
                                     oplog_id=f"{STORM_FUNCTION}-{key}")
            except IntegrityError as error:
                log.write("call-already-created", key=key, detail=str(error)[:200])
            except JournalUnavailable as error:
                if not error.created and time.monotonic() < deadline:
                    # Its oplog was never created and nothing was sent: call it again
                    # (JournalUnavailable's contract), as a caller would after a failover.
                    log.write("call-again", key=key, detail=str(error)[:200])
                    time.sleep(args.every)
                    continue
                log.write("call-error", key=key, error=type(error).__name__, detail=str(error)[:200])
            except Exception as error:   # the oplog stays open: a resume_all() finishes it
                log.write("call-error", key=key, error=type(error).__name__, detail=str(error)[:200])
            else:
                log.write("call-done", key=key, result=result)
            return

    print("ready", flush=True)
    log.write("start", functions=args.functions, first=args.first)
    deadline = time.monotonic() + args.timeout
    pool = ThreadPoolExecutor(args.workers)
    calls = [pool.submit(call, key) for key in keys]
    pool.shutdown(wait=False)
    status = 1
    try:
        while time.monotonic() < deadline:
            time.sleep(args.every)
            try:
                outcomes = journal.resume_all(timeout=None)
                for outcome in outcomes:
                    if outcome.status != "busy":
                        log.write("resume", oplog=outcome.oplog_id, status=outcome.status,
                                  result=outcome.value if outcome.status == "done" else None,
                                  error=type(outcome.error).__name__ if outcome.error else None)
                if all(c.done() for c in calls) and not _open_left(journal):
                    status = 0
                    break
            except journal_outages() as error:
                log.write("unavailable", error=type(error).__name__, detail=str(error)[:200])
        log.write("finished" if status == 0 else "timed-out")
        return status
    finally:
        journal.close()
        log.stream.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
