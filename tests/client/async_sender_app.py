"""An ``async def`` resumable function as an importable module, and a child process
that SIGKILLs itself mid-send.

``python -m tests.client.async_sender_app DB_URL ESCROW_URL POINT`` runs ``transfer``
under ``asyncio.run`` with a fault hook that sends SIGKILL to its own process at
``POINT`` of the certified send (``send-recorded``: recorded, nothing sent;
``send-answered``: answered, not recorded).
``python -m tests.client.async_sender_app resume-async DB_URL`` resumes every open oplog
from a running loop (``await journal.resume_all_async()``). ``chttp-client resume
--import tests.client.async_sender_app`` finds ``transfer`` because importing this module
registers it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys

from chttp_client import Journal, resumable
from chttp_client.journal import register
from chttp_client.testing import set_fault_hook

NAME = "tests.client.async_sender_app.transfer"


async def _draw(bound: int) -> int:
    await asyncio.sleep(0)
    return secrets.randbelow(bound)


async def transfer_body(escrow_url, amount, *, chttp_context):
    local = await chttp_context.persist(_draw, 10**6)      # a coroutine function, awaited once
    response = await chttp_context.post(escrow_url, json={"amount": amount, "local": local})
    return local + response.json()["random number"]


register(NAME, 1, transfer_body)


def install(journal: Journal):
    return resumable(journal, name=NAME)(transfer_body)


def main(argv: list[str]) -> int:
    if argv[0] == "resume-async":
        async def resume(db_url: str) -> None:
            with Journal(db_url) as journal:
                for outcome in await journal.resume_all_async():
                    print(outcome.oplog_id, outcome.status, outcome.value, flush=True)

        asyncio.run(resume(argv[1]))
        return 0
    db_url, escrow_url, point = argv
    journal = Journal(db_url)
    transfer = install(journal)

    def kill_self(event) -> None:
        if event.point == point and event.kind == "send":
            os.kill(os.getpid(), signal.SIGKILL)

    set_fault_hook(journal, kill_self)
    print(asyncio.run(transfer(escrow_url, 5)))
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
