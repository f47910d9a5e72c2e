"""Leases kept alive for a whole run: one background renewer per journal, in real time.

A lease is short — three heartbeats, 15 s by default (:mod:`chttp_client.lease_timing`)
— so that a worker that died on *another* host (whose pid nobody here can check) is
taken over within seconds. A live run must then never let it lapse, whatever it waits
on: one long attempt, a backoff sleep of minutes, a slow step of its own between two
commits. So every run *holds* its lease here from the moment it has one (its oplog row
exists) until its last commit (:meth:`Heartbeat.hold`, :meth:`Heartbeat.start`), and
one daemon thread per journal renews each held lease every ``interval`` (the
heartbeat), paced by the monotonic clock — never by ``Journal(clock=…)``, which a test
may freeze: the lease's deadline runs on the database's real clock
(:mod:`chttp_client.leases`), so its renewals must too. The thread serves ``def`` and
``async def`` runs alike (an event loop's runs hold leases from the loop; the SQL is in
this thread, never on the loop). The same beat renews the acknowledgement claims of
the DELETEs this process still has queued or in flight
and of those done whose mark no commit has written yet
(:meth:`~chttp_client.acknowledger.Acknowledger.in_hand`), so a live process's backlog
is never acknowledged twice by another's ``resume_all()``, while a killed process's
claims lapse within a lease.

A renewal is not *progress*: it does not reset the oplog's count of resumes without
progress (``max_resume_attempts``), so a function that crash-loops after a slow step is
still abandoned. A renewal that finds the lease taken over (or the oplog abandoned)
stops renewing it; the run's next commit then raises
:class:`~chttp_client.errors.OplogTakenOverError` (or
:class:`~chttp_client.errors.OplogAbandonedError`). A renewal that cannot reach the
database is retried a third of a beat later; a lease of 3 heartbeats lapses only after
the database was out of reach for about two of them.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterator

from chttp_client.acknowledger import Acknowledger
from chttp_client.errors import OplogAbandonedError, OplogBusyError
from chttp_client.leases import renew_ack_claims
from chttp_client.oplog_store import OplogStore

__all__ = ["Heartbeat"]

log = logging.getLogger("chttp_client")


@dataclass
class _Held:
    oplog_id: str
    owner: str
    #: ``time.monotonic()`` of the next renewal.
    due: float


class Heartbeat:
    """Renews the leases of the runs of one journal (see the module docstring)."""

    def __init__(self, store: OplogStore, *, clock: Callable[[], datetime], lease: timedelta,
                 interval: timedelta, acknowledger: Acknowledger | None = None) -> None:
        self.store = store
        #: Whose acknowledgement claims (DELETEs queued, in flight, or done but unmarked) it keeps.
        self.acknowledger = acknowledger
        self.clock = clock
        self.lease = lease
        self.interval = interval.total_seconds()
        self._held: dict[int, _Held] = {}
        self._keys = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @contextmanager
    def hold(self, oplog_id: str, owner: str) -> Iterator[None]:
        """Keep ``owner``'s lease on ``oplog_id`` (just taken or renewed) alive meanwhile."""
        key = self.start(oplog_id, owner)
        try:
            yield
        finally:
            self.stop(key)

    def start(self, oplog_id: str, owner: str) -> int | None:
        """Renew ``owner``'s lease on ``oplog_id`` every beat from now on, until
        :meth:`stop` with the key returned (None: a lease of 0 has nothing to keep)."""
        if self.lease <= timedelta(0):
            return None
        with self._wake:
            key = next(self._keys)
            self._held[key] = _Held(oplog_id, owner, time.monotonic() + self.interval)
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="chttp-lease-heartbeat",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()
        return key

    def stop(self, key: int | None) -> None:
        """Renew no more for the hold ``key`` (its run ended, or wrote its last commit)."""
        if key is not None:
            with self._wake:
                self._held.pop(key, None)

    def held(self) -> set[tuple[str, str]]:
        """The ``(oplog_id, owner)`` leases renewed now."""
        with self._wake:
            return {(h.oplog_id, h.owner) for h in self._held.values()}

    def _run(self) -> None:
        claims_due = time.monotonic() + self.interval
        while True:
            with self._wake:
                if self._stopping:
                    return
                now = time.monotonic()
                due = [held for held in self._held.values() if held.due <= now]
                if not due and now < claims_due:
                    soonest = min((held.due for held in self._held.values()), default=claims_due)
                    self._wake.wait(max(0.0, min(soonest, claims_due) - now))
                    continue
            self._beat(due)
            if now >= claims_due:
                claims_due = now + self.interval
                self._renew_claims()

    def _renew_claims(self) -> None:
        """Keep the claims of the acknowledgements this process still has in hand."""
        claims = self.acknowledger.in_hand() if self.acknowledger is not None else []
        if not claims:
            return
        try:
            renew_ack_claims(self.store.engine, claims, self.lease)
        except Exception:  # noqa: BLE001 - the journal unreachable: retried next beat
            log.info("chttp: %d acknowledgement claim(s) not renewed", len(claims), exc_info=True)

    def _beat(self, due: list[_Held]) -> None:
        """Renew each due lease once (two holds of one run share it)."""
        renewed: dict[tuple[str, str], bool] = {}
        for held in due:
            lease = (held.oplog_id, held.owner)
            if lease not in renewed:
                renewed[lease] = self._renew(*lease)
            if renewed[lease]:
                held.due = time.monotonic() + self.interval
            else:
                held.due = time.monotonic() + self.interval / 3   # retried soon

    def _renew(self, oplog_id: str, owner: str) -> bool:
        try:
            self.store.renew_lease(oplog_id, owner, now=self.clock(), lease=self.lease, progress=False)
        except (OplogBusyError, OplogAbandonedError) as error:
            with self._wake:
                lost = [key for key, h in self._held.items() if (h.oplog_id, h.owner) == (oplog_id, owner)]
                for key in lost:
                    del self._held[key]
            if lost:  # else the run ended meanwhile (its last commit released the lease)
                log.warning("chttp: lease of oplog %s lost while its run went on: %s", oplog_id, error)
            return True
        except Exception:  # noqa: BLE001 - the journal unreachable: retried soon
            log.info("chttp: could not renew the lease of oplog %s", oplog_id, exc_info=True)
            return False
        return True

    def close(self) -> None:
        """Stop the renewer thread (held leases are no longer renewed)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
