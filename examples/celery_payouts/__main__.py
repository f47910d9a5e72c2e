"""``python -m chttp_examples.celery_payouts --ledger URL --payouts N``: send payouts, wait.

Sends ``N`` payouts of 1 to the payees in turn, waits for every one, and prints each
payout's task id (its oplog id: ``chttp-client show --db $PAYOUTS_JOURNAL <id>``) and
the balance the ledger answered.

Each payout is published under a task id this producer keeps, and published again —
same id, same arguments — when no result came within ``--patience`` seconds: kombu's
Redis transport can lose a message outright when a worker dies between popping it and
recording it as unacknowledged (docs/celery.rst, "Re-publish what never finished"). A
duplicate of a finished task returns its recorded result and one of a running task
waits for it, so a re-publish never pays twice.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from celery.exceptions import TimeoutError as ResultTimeout

from chttp_examples.celery_payouts.tasks import pay_out

PAYEES = ("alice", "bob", "carol")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.celery_payouts")
    parser.add_argument("--ledger", required=True, help="the ledger's base URL")
    parser.add_argument("--payouts", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all")
    parser.add_argument("--patience", type=float, default=30.0,
                        help="seconds without a result before a payout is published again "
                             "under its task id (safe: it never pays twice)")
    options = parser.parse_args(argv)
    deadline = time.monotonic() + options.timeout
    payouts = [(str(uuid.uuid4()), (options.ledger, f"payout-{number}", PAYEES[number % len(PAYEES)], 1))
               for number in range(options.payouts)]
    results = [pay_out.apply_async(arguments, task_id=task_id) for task_id, arguments in payouts]
    for (task_id, arguments), result in zip(payouts, results):
        while True:
            try:
                balance = result.get(timeout=max(0.1, min(options.patience,
                                                          deadline - time.monotonic())))
                break
            except ResultTimeout:
                if time.monotonic() >= deadline:
                    raise
                print(f"{arguments[1]}: no result after {options.patience:g} s, published "
                      f"again under task {task_id}", file=sys.stderr, flush=True)
                result = pay_out.apply_async(arguments, task_id=task_id)
        print(f"{arguments[1]} task {task_id} {arguments[2]} balance {balance}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
