"""A child process that persists a token, writes it to a file, then SIGKILLs itself.

``python -m tests.client.checkpoint_app DB_URL PATH checkpoint|no-checkpoint`` runs
``write_token``: persist a random token, (``checkpoint()``), append it to ``PATH`` (a
side effect outside the journal), and die by SIGKILL at the next step. Importing this
module registers the function, so the parent can resume the oplog.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path

from chttp_client import Journal
from chttp_client.journal import register
from chttp_client.testing import set_fault_hook

NAME = "tests.client.checkpoint_app.write_token"


def write_token(path: str, checkpoint: bool, *, chttp_context):
    token = chttp_context.persist(secrets.token_hex, 16)
    if checkpoint:
        chttp_context.checkpoint()
    with Path(path).open("a") as file:  # the side effect: at least once, same token
        file.write(token + "\n")
    chttp_context.persist("after the side effect")
    return token


register(NAME, 1, write_token)


def main(argv: list[str]) -> int:
    db_url, path, mode = argv
    journal = Journal(db_url)

    def kill_self(event) -> None:
        if event.point == "before-step" and event.step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    set_fault_hook(journal, kill_self)
    journal.run(NAME, 1, write_token, (path, mode == "checkpoint"), {})
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
