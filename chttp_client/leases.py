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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Interval,
    and_,
    bindparam,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Dialect

from chttp_core.schema import OPLOG_OPEN, oplog_steps, oplogs

__all__ = ["new_owner", "retire_owner", "owner_is_gone", "database_now", "lease_deadline", "LiveLease", "live_lease",
           "expire_leases", "renew_ack_claims"]

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


#: Owners of this process whose run ended without releasing its lease (the journal was
#: unavailable): their leases are free at once for a resume in this process.
_RETIRED: set[str] = set()


def retire_owner(owner: str) -> None:
    """Mark ``owner``'s run as over: it will write and send nothing more."""
    _RETIRED.add(owner)


def owner_is_gone(owner: str) -> bool:
    """True if ``owner`` was a process of this host that no longer exists, or a run of
    this process that ended (:func:`retire_owner`).

    Its lease is free whatever its deadline says. Only this host's pids can be checked,
    hence every sender host needs a host name of its own (docs/scale.rst).
    """
    if owner in _RETIRED:
        return True
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


@dataclass(frozen=True)
class LiveLease:
    """Who runs an oplog right now, and until when (the database's clock)."""

    owner: str
    expires_at: datetime | None


def live_lease(connection: Connection, oplog_id: str) -> LiveLease | None:
    """The lease of the open oplog ``oplog_id`` if a live process holds it, else None.

    Live as a taker judges it: not expired by the database's clock, and not the lease
    of a process of this host that is gone. For an operator about to abandon an oplog
    under a running worker (``chttp-client abandon`` asks for ``--force``).
    """
    row = connection.execute(
        select(oplogs.c.lease_owner, oplogs.c.lease_expires_at,
               (oplogs.c.lease_expires_at > database_now(connection.dialect)).label("live"))
        .where(oplogs.c.id == oplog_id, oplogs.c.state == OPLOG_OPEN)
    ).first()
    if row is None or row.lease_owner is None or not row.live or owner_is_gone(row.lease_owner):
        return None
    expires = row.lease_expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)
    return LiveLease(row.lease_owner, expires)


def expire_leases(engine: Engine, oplog_id: str | None = None) -> int:
    """End the leases (and acknowledgement claims) of ``oplog_id``, or of every oplog, now.

    Their owners stay recorded, so a taker still swaps on the owner it saw, and a
    live owner's next commit still renews or finds itself taken over, exactly as
    when the lease ran out by the database's clock. For tests (lease time passing
    without waiting for it) and for an operator who knows a host is gone. Returns
    how many oplog leases were ended.
    """
    dialect = engine.dialect
    leased: ColumnElement[bool] = and_(oplogs.c.lease_owner.is_not(None),
                                       oplogs.c.state == OPLOG_OPEN)
    claimed: ColumnElement[bool] = oplog_steps.c.ack_claimed_until.is_not(None)
    if oplog_id is not None:
        leased = and_(leased, oplogs.c.id == oplog_id)
        claimed = and_(claimed, oplog_steps.c.oplog_id == oplog_id)
    with engine.begin() as connection:
        connection.execute(update(oplog_steps).where(claimed)
                           .values(ack_claimed_until=database_now(dialect)))
        return connection.execute(update(oplogs).where(leased)
                                  .values(lease_expires_at=database_now(dialect))).rowcount


def renew_ack_claims(engine: Engine, claims: Sequence[tuple[str, int]], lease: timedelta) -> None:
    """Extend the acknowledgement claims ``(oplog id, step)`` this process still holds to
    ``lease`` from the database's now (its queued or in-flight DELETEs: the heartbeat
    calls this). Only claims still open: an acknowledged answer, or a claim released by
    a failed DELETE, is left alone. A row a run's commit has locked meanwhile (writing
    its mark) is skipped, not waited for (PostgreSQL: ``SKIP LOCKED``), so this
    statement never deadlocks with a commit; the next beat renews it if still needed."""
    dialect = engine.dialect
    for start in range(0, len(claims), 100):
        chunk = claims[start:start + 100]
        still_claimed = (
            select(oplog_steps.c.oplog_id, oplog_steps.c.number).where(
                or_(*(and_(oplog_steps.c.oplog_id == oplog_id, oplog_steps.c.number == number)
                      for oplog_id, number in chunk)),
                oplog_steps.c.acknowledged_at.is_(None), oplog_steps.c.ack_claimed_until.is_not(None))
            .with_for_update(skip_locked=True))
        with engine.begin() as connection:
            connection.execute(
                update(oplog_steps)
                .where(tuple_(oplog_steps.c.oplog_id, oplog_steps.c.number).in_(still_claimed))
                .values(ack_claimed_until=lease_deadline(dialect, lease)))
