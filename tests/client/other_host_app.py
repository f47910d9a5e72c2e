"""A sender worker "on another host" that SIGKILLs itself mid-run (issue 23, item 10).

``python -m tests.client.other_host_app DB_URL BASE_URL POINT`` runs :func:`transfer`
under the host name :data:`OTHER_HOST` (``socket.gethostname`` is replaced before the
journal names its lease owner), with a short lease (:data:`HEARTBEAT`, :data:`LEASE`).
Another process on this machine then sees a lease owner whose pid it cannot check — as
a worker in another container or on another machine — and must wait for the lease to
lapse, not for the pid to go. The worker kills itself with a real SIGKILL at ``POINT``:

* ``send-recorded``: the intent is committed, nothing sent;
* ``send-answered``: the receiver ran the handler, the answer is not recorded;
* ``checkpoint``: the answer is committed and its acknowledgement claimed by this
  worker, whose DELETE never leaves (the claim of a killed process).

Importing this module registers :func:`transfer`, so the taking-over process can
resume it (it never kills itself: :data:`KILL` is set by :func:`main` only).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from datetime import timedelta

from chttp_client import Journal, resumable
from chttp_client.journal import register
from chttp_client.testing import set_fault_hook

NAME = "tests.client.other_host_app.transfer"
OTHER_HOST = "chttp-test-other-host"
HEARTBEAT = timedelta(seconds=0.2)
LEASE = timedelta(seconds=1)
#: Where this process kills itself (None: never, as in the taking-over process).
KILL: str | None = None


def transfer(base_url, *, chttp_context):
    answer = chttp_context.post(f"{base_url}/escrow", json={"amount": 7})
    if KILL == "checkpoint":
        chttp_context.checkpoint()  # the answer is durable, its acknowledgement claimed
        os.kill(os.getpid(), signal.SIGKILL)
    return answer.json()["random number"]


register(NAME, 1, transfer)


def main(argv: list[str]) -> int:
    global KILL
    db_url, base_url, point = argv
    KILL = point
    socket.gethostname = lambda: OTHER_HOST  # another host: our pid means nothing there
    journal = Journal(db_url, heartbeat=HEARTBEAT, lease=LEASE)
    if point == "checkpoint":
        journal.acknowledger.queue = lambda *_args: None  # type: ignore[method-assign]

    def kill_self(event) -> None:
        if event.point == point and event.kind == "send":
            os.kill(os.getpid(), signal.SIGKILL)

    set_fault_hook(journal, kill_self)
    print(resumable(journal, name=NAME)(transfer)(base_url))
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
