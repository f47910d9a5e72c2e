"""Who runs an oplog: lease owners, and when a lease may be taken.

An oplog being run is leased to ``host/pid/token`` until ``lease_expires_at``. Taking a
lease is a compare-and-swap in the store (:meth:`OplogStore.take_lease
<chttp_client.oplog_store.OplogStore.take_lease>`), so two processes resuming at once
never run the same oplog. A lease is free when it expired, or when its owner is a
process on this host that no longer exists: a SIGKILLed sender is resumed at once, not
after the lease time.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime

__all__ = ["new_owner", "lease_is_free"]


def new_owner() -> str:
    """A fresh lease owner for one run: ``host/pid/random``."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_is_free(owner: str, expires_at: datetime | None, now: datetime) -> bool:
    """True if a lease held by ``owner`` until ``expires_at`` may be taken at ``now``."""
    if expires_at is None or expires_at <= now:
        return True
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host == socket.gethostname() and pid_text.isdigit():
        return not _process_alive(int(pid_text))
    return False
