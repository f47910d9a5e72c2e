"""A resumer process: ``python -m tests.client.resumer_app DB_URL ROUNDS``.

Runs ``Journal(DB_URL).resume_all()`` ROUNDS times (each round also retries pending
acknowledgements), then closes the journal. Importing :mod:`tests.client.sender_app`
registers the function its oplogs need.
"""

from __future__ import annotations

import sys

import tests.client.sender_app  # noqa: F401 - registers transfer
from chttp_client import Journal


def main(argv: list[str]) -> int:
    db_url, rounds = argv[0], int(argv[1])
    with Journal(db_url) as journal:
        for _ in range(rounds):
            for outcome in journal.resume_all():
                print(outcome.oplog_id, outcome.status, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
