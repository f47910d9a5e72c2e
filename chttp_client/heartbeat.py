"""Leases that hold through long attempts: one background renewer per journal.

A run renews its oplog's lease with every commit, but a certified send can wait on the
network far longer than that: one slow attempt, or retries for hours while the receiver
is down. Without renewals meanwhile, the lease lapses and another process's
``resume_all()`` takes the oplog over from a process that is still alive. So while a
send is in flight its run is *held* here (:meth:`Heartbeat.hold`), and one daemon thread
per journal renews every held lease once a third of it has passed (timed by the
journal's clock, whose offset does not matter: only how fast it runs), checking a few
times per lease. The renewed deadline is the database's now plus the lease
(:mod:`chttp_client.leases`), so a host whose clock is off still keeps its lease. A renewal that finds the lease taken over stops
renewing it; the run's next commit then raises
:class:`~chttp_client.errors.OplogTakenOverError` (or
:class:`~chttp_client.errors.OplogAbandonedError`, if an operator abandoned it).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterator

from chttp_client.errors import OplogAbandonedError, OplogBusyError
from chttp_client.oplog_store import OplogStore

__all__ = ["Heartbeat"]

log = logging.getLogger("chttp_client")

#: The longest the renewer sleeps between checks, in seconds (a long lease still gets
#: checked often enough to follow a clock that tests move by hand).
_MAX_POLL = 1.0


@dataclass
class _Held:
    owner: str
    renewed_at: datetime


class Heartbeat:
    """Renews the leases of in-flight sends of one journal (see the module docstring)."""

    def __init__(self, store: OplogStore, *, clock: Callable[[], datetime], lease: timedelta) -> None:
        self.store = store
        self.clock = clock
        self.lease = lease
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def hold(self, oplog_id: str, owner: str, renewed_at: datetime) -> Iterator[None]:
        """Keep ``owner``'s lease on ``oplog_id`` (last renewed at ``renewed_at``) alive."""
        if self.lease <= timedelta(0):  # a lease that is free at once has nothing to keep
            yield
            return
        with self._lock:
            self._held[oplog_id] = _Held(owner, renewed_at)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="chttp-lease-heartbeat",
                                                daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(oplog_id, None)

    def _run(self) -> None:
        poll = min(_MAX_POLL, self.lease.total_seconds() / 6)
        while not self._stop.wait(poll):
            self.beat()

    def beat(self) -> None:
        """Renew every held lease that is a third gone (the thread calls this)."""
        now = self.clock()
        with self._lock:
            due = [(oplog_id, held) for oplog_id, held in self._held.items()
                   if now - held.renewed_at >= self.lease / 3]
        for oplog_id, held in due:
            try:
                self.store.renew_lease(oplog_id, held.owner, now=now, lease=self.lease)
            except (OplogBusyError, OplogAbandonedError) as error:
                log.warning("chttp: lease of oplog %s lost while a send was in flight: %s", oplog_id, error)
                with self._lock:
                    self._held.pop(oplog_id, None)
            except Exception:  # noqa: BLE001 - the journal unreachable: retried next beat
                log.info("chttp: could not renew the lease of oplog %s", oplog_id, exc_info=True)
            else:
                held.renewed_at = now

    def close(self) -> None:
        """Stop the renewer thread (held leases are no longer renewed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
