"""Who runs an oplog: lease owners, and the one clock every lease is read with.

An oplog being run is leased to ``host/pid/token`` until ``lease_expires_at``. Taking a
lease is a compare-and-swap in the store (:meth:`OplogStore.take_lease
<chttp_client.oplog_store.OplogStore.take_lease>`), so two processes resuming at once
never run the same oplog. A lease is free when it expired, or when its owner is a
process on this host that no longer exists (:func:`owner_is_gone`): a SIGKILLed sender
is resumed at once, not after the lease time.

**The database's clock, never the hosts'.** A lease is written by one host and read by
another; stamped with the owner's clock and compared with the taker's, a taker whose
clock runs ahead by more than the renewal margin (about two thirds of the lease) takes
over a live, renewing owner. So the deadline is computed, and compared, in SQL with
the clock of the database every host shares (:func:`database_now`,
:func:`lease_deadline`): ``clock_timestamp()`` on PostgreSQL — the server's time at the
statement, not at ``BEGIN``, so a transaction that waited on a lock does not write a
deadline already partly spent. On SQLite the database is a file on one machine and
``strftime(…, 'now')`` reads that machine's system clock (through SQLite's VFS), the
one every process sharing the file reads too; the same SQL path keeps both backends
alike and keeps ``Journal(clock=…)`` — a test's fake clock, or a host's skewed one —
out of every lease decision. Millisecond precision there, microseconds on PostgreSQL.
The acknowledgement claims (``chttp_oplog_steps.ack_claimed_until``) are leases of the
same kind and use the same two expressions.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import Interval, bindparam, func
from sqlalchemy.engine import Dialect

__all__ = ["new_owner", "owner_is_gone", "database_now", "lease_deadline"]

#: SQLite's ``strftime`` format matching how SQLAlchemy stores a ``DateTime`` there
#: (``YYYY-MM-DD HH:MM:SS.fff``), so that text comparisons order like instants.
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f"


def new_owner() -> str:
    """A fresh lease owner for one run: ``host/pid/random``."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


def _process_alive(pid: int) -> bool:
    """True if ``pid`` is a running process; a zombie (killed, not yet reaped) is not.

    A SIGKILLed Celery worker's pool children are reparented to PID 1, which may reap
    them seconds later or never (a container without an init): as zombies they still
    answer ``kill(pid, 0)``, yet they will never renew or release a lease.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) S …": the state follows the last ')' (comm may hold one).
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return False  # no /proc (not Linux): kill(pid, 0) is all we know


def owner_is_gone(owner: str) -> bool:
    """True if ``owner`` was a process of this host that no longer exists.

    Its lease is free whatever its deadline says. Only this host's pids can be checked,
    hence every sender host needs a host name of its own (docs/scale.rst).
    """
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    return host == socket.gethostname() and pid_text.isdigit() and not _process_alive(int(pid_text))


def database_now(dialect: Dialect) -> Any:
    """The database's current time as a SQL expression (see the module docstring)."""
    if dialect.name == "sqlite":
        return func.strftime(_SQLITE_FORMAT, "now")
    if dialect.name == "postgresql":
        return func.clock_timestamp()
    return func.current_timestamp()


def lease_deadline(dialect: Dialect, lease: timedelta) -> Any:
    """``lease`` from the database's now, as a SQL expression for ``…_until`` columns."""
    if dialect.name == "sqlite":
        return func.strftime(_SQLITE_FORMAT, "now", f"{lease.total_seconds():+.6f} seconds")
    return database_now(dialect) + bindparam(None, lease, type_=Interval())
