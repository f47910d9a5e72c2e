"""``python -m chttp_examples.celery_payouts --ledger URL --payouts N``: send payouts, wait.

Sends ``N`` payouts of 1 to the payees in turn, waits for every one, and prints each
payout's task id (its oplog id: ``chttp-client show --db $PAYOUTS_JOURNAL <id>``) and
the balance the ledger answered.
"""

from __future__ import annotations

import argparse
import sys

from chttp_examples.celery_payouts.tasks import pay_out

PAYEES = ("alice", "bob", "carol")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.celery_payouts")
    parser.add_argument("--ledger", required=True, help="the ledger's base URL")
    parser.add_argument("--payouts", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all")
    options = parser.parse_args(argv)
    results = [pay_out.delay(options.ledger, f"payout-{number}", PAYEES[number % len(PAYEES)], 1)
               for number in range(options.payouts)]
    for number, result in enumerate(results):
        balance = result.get(timeout=options.timeout)
        print(f"payout-{number} task {result.id} {PAYEES[number % len(PAYEES)]} balance {balance}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
