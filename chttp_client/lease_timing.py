"""How long a lease lasts: a small multiple of the heartbeat that renews it.

A run's lease (:mod:`chttp_client.leases`) is renewed every ``heartbeat`` (5 s by
default) for as long as the run lives (:mod:`chttp_client.heartbeat`), so it only has
to outlast a few missed beats, not the run: ``lease`` defaults to
``LEASE_BEATS × heartbeat`` = 15 s. That is also how long a worker that died on another
host — another machine, container or Kubernetes pod, where its pid cannot be checked —
holds its oplogs and its acknowledgement claims before another worker takes them over.
On the dead owner's own host the lease is free at once (its pid is gone).

A lease shorter than ``MIN_LEASE_BEATS × heartbeat`` is refused
(:class:`~chttp_client.errors.JournalError`): one late beat (a slow database, a busy
host) would then let a live run's oplog be taken over. A lease of 0 is the one
exception — free at once, nothing renewed — for tests and one-shot tools that want a
crashed run resumable without waiting.

The send's own deadline (``RetryPolicy.deadline``, one day by default) is not bounded
by the lease: a live run renews its lease through every attempt and every backoff
sleep, however long, so a send keeps retrying up to its deadline under one lease.
"""

from __future__ import annotations

from datetime import timedelta

from chttp_client.errors import JournalError

__all__ = ["DEFAULT_HEARTBEAT", "LEASE_BEATS", "MIN_LEASE_BEATS", "lease_for"]

#: How often a live run renews its lease.
DEFAULT_HEARTBEAT = timedelta(seconds=5)
#: The default lease, in heartbeats.
LEASE_BEATS = 3
#: The shortest lease accepted (other than 0), in heartbeats.
MIN_LEASE_BEATS = 2


def lease_for(lease: timedelta | None, heartbeat: timedelta) -> timedelta:
    """The lease of a journal given ``Journal(lease=…, heartbeat=…)``; JournalError if
    they do not fit (see the module docstring)."""
    if heartbeat <= timedelta(0):
        raise JournalError(f"heartbeat must be positive, not {heartbeat}")
    if lease is None:
        return heartbeat * LEASE_BEATS
    if lease < timedelta(0):
        raise JournalError(f"lease must not be negative, not {lease}")
    if timedelta(0) < lease < heartbeat * MIN_LEASE_BEATS:
        raise JournalError(
            f"lease={lease} is shorter than {MIN_LEASE_BEATS} heartbeats (heartbeat={heartbeat}): "
            f"one late renewal would let another worker take a live run's oplog over; give "
            f"lease >= {heartbeat * MIN_LEASE_BEATS} (default {LEASE_BEATS} x heartbeat), a "
            f"shorter heartbeat, or lease=0 (free at once, tests)")
    return lease
