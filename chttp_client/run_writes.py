"""The journal writes that can end a run: an outage, and an attempt counted before it leaves.

A mixin of :class:`~chttp_client.context.ResumableContext` (the step logic stays there).

* Every write of a run goes through :meth:`RunWrites._journal`. When the journal's
  database is gone (:class:`~chttp_client.errors.JournalUnavailable`, see
  :mod:`chttp_client.outage`) the run ends there: it records nothing more even if the
  function swallows the error — a later step written without the lost one would leave a
  gap in the oplog — and its lease is free at once for a ``resume`` in this process
  (:func:`~chttp_client.leases.retire_owner`), since this run will send nothing more.
* Every attempt of a send after the first of its intent commit is counted in the
  journal before it leaves (:meth:`RunWrites._count_attempt`), so ``DeadlineExceeded``
  reports the attempts of every process that ran the send, and a run whose oplog was
  abandoned or taken over meanwhile stops *before* the attempt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from chttp_client.codec import CodecError
from chttp_client.errors import JournalUnavailable, NonDeterminismError
from chttp_client.leases import retire_owner
from chttp_client.records import StepRecord
from chttp_client.services import RunServices

__all__ = ["RunWrites"]


class RunWrites:
    """Journal writes of one run (see the module docstring); mixed into the context."""

    oplog_id: str
    _services: RunServices
    _owner: str
    _poisoned: NonDeterminismError | CodecError | JournalUnavailable | None
    _lease_renewed_at: datetime | None

    def _count_attempt(self, record: StepRecord, attempts: int) -> None:
        """Before attempt ``attempts`` of ``record`` leaves: count it, renewing the lease."""
        now = self._services.clock()
        self._journal(self._services.store.count_attempt, self.oplog_id, self._owner, record.number,
                      attempts, now=now, lease=self._services.lease)
        self._lease_renewed_at = now

    def _journal(self, write: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """One journal write; :class:`JournalUnavailable` ends the run (module docstring)."""
        try:
            write(*args, **kwargs)
        except JournalUnavailable as error:
            self._poisoned = error
            retire_owner(self._owner)
            raise
