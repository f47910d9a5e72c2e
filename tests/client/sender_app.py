"""The seed's example as an importable module, and a child process that SIGKILLs itself.

``python -m tests.client.sender_app DB_URL ESCROW_URL POINT`` runs ``transfer`` with a
fault hook that sends SIGKILL to its own process at ``POINT`` of the certified send
(``send-recorded``: recorded, nothing sent; ``send-answered``: answered, not recorded).
``chttp-client resume --import tests.client.sender_app`` finds ``transfer`` because
importing this module registers it.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys

from chttp_client import Journal, resumable
from chttp_client.journal import register
from chttp_client.testing import set_fault_hook

NAME = "tests.client.sender_app.transfer"


def transfer_body(escrow_url, amount, *, chttp_context):
    local = chttp_context.persist(secrets.randbelow, 10**6)
    response = chttp_context.post(escrow_url, json={"amount": amount})
    return local + response.json()["random number"]


register(NAME, 1, transfer_body)


def install(journal: Journal):
    return resumable(journal, name=NAME)(transfer_body)


def main(argv: list[str]) -> int:
    db_url, escrow_url, point = argv
    journal = Journal(db_url)
    transfer = install(journal)

    def kill_self(event) -> None:
        if event.point == point and event.kind == "send":
            os.kill(os.getpid(), signal.SIGKILL)

    set_fault_hook(journal, kill_self)
    print(transfer(escrow_url, 5))
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
