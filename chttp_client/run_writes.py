"""The journal writes of one run: its commits, its lease, and the attempts it counts.

A mixin of :class:`~chttp_client.steps.RunSteps` (the step rules stay there), written as
step logic like them (:mod:`chttp_client.effects`): each write is a
:class:`~chttp_client.effects.Blocking` effect, so a ``def`` and an ``async def`` run
make the very same writes.

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
* The durability arrangement (:mod:`chttp_client.context`): :meth:`RunWrites._commit`
  writes the buffered records with the oplog's next step or result in one transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from chttp_client import telemetry
from chttp_client.codec import CodecError
from chttp_client.effects import Blocking, Steps
from chttp_client.errors import JournalUnavailable, NonDeterminismError
from chttp_client.leases import retire_owner
from chttp_client.oplog_store import Commit, Finish, NewOplog
from chttp_client.records import PendingWrites, StepRecord
from chttp_client.services import RunServices

__all__ = ["RunWrites"]


class RunWrites:
    """Journal writes of one run (see the module docstring); mixed into the step logic."""

    oplog_id: str
    function: str
    version: int
    _services: RunServices
    _owner: str
    _arguments: str
    _stored: bool
    _writes: PendingWrites
    _poisoned: NonDeterminismError | CodecError | JournalUnavailable | None
    _lease_renewed_at: datetime | None
    #: The run's function is running (call_steps): the heartbeat holds its lease.
    _whole_run: bool = False
    #: The heartbeat's key of that hold, once the run has a lease.
    _beat: int | None = None

    def _journal(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Steps[Any]:
        """One journal write; :class:`JournalUnavailable` ends the run (module docstring)."""
        try:
            return (yield Blocking(write, args, kwargs))
        except JournalUnavailable as error:
            self._poisoned = error
            retire_owner(self._owner)
            raise

    def _count_attempt(self, record: StepRecord, attempts: int) -> Steps[None]:
        """Before attempt ``attempts`` of ``record`` leaves: count it, renewing the lease."""
        now = self._services.clock()
        yield from self._journal(self._services.store.count_attempt, self.oplog_id, self._owner,
                                 record.number, attempts, now=now, lease=self._services.lease)
        self._lease_renewed_at = now

    def _commit(self, new_steps: list[StepRecord], finish: Finish | None = None) -> Steps[None]:
        """One transaction: oplog row if new, buffered records, ``new_steps``, ack marks."""
        services = self._services
        writes = self._writes
        now = services.clock()
        yield from self._journal(services.store.commit, Commit(
            oplog_id=self.oplog_id, owner=self._owner, now=now, lease=services.lease,
            new=None if self._stored else NewOplog(self.function, self.version, self._arguments),
            inserts=writes.steps + new_steps, answers=writes.answers, finish=finish,
            acks=services.acknowledger.take_marks(),
            # This process acknowledges the answers it makes durable (and nobody else
            # meanwhile); without acknowledgements, resume_all() will.
            ack_claim=services.lease if services.acknowledger.enabled else None,
        ))
        # The buffer is durable: its answers may be acknowledged now.
        self._writes = PendingWrites()
        telemetry.oplog_committed(new=not self._stored, finish=finish)
        self._stored = True
        self._lease_renewed_at = now
        self._keep_lease()  # a new run's first commit: from now on it holds a lease
        for number, url in writes.acks:
            services.acknowledger.queue(self.oplog_id, number, url)

    def _finish(self, state: str, result: dict[str, Any]) -> Steps[None]:
        """The run's last commit: buffered steps and the oplog's result, lease released."""
        self._drop_lease()
        yield from self._commit([], Finish(state, result))

    def _give_up(self) -> Steps[None]:
        """End a run that records nothing more (poisoned, cancelled): free its lease, so
        that a resume need not wait for it. The buffered records are dropped, as a
        crash would drop them (nothing outside the process depends on them). After
        :class:`JournalUnavailable` there is no database to free it in: the owner was
        retired instead (:meth:`_journal`)."""
        self._drop_lease()
        if isinstance(self._poisoned, JournalUnavailable):
            return
        yield Blocking(self._services.store.release_lease, (self.oplog_id, self._owner))

    def _keep_lease(self) -> None:
        """While the function runs and its oplog is stored (leased to this run), the
        journal's heartbeat renews the lease in real time (:mod:`chttp_client.heartbeat`):
        through slow steps, long attempts and backoff sleeps alike."""
        if self._whole_run and self._stored and self._beat is None:
            self._beat = self._services.heartbeat.start(self.oplog_id, self._owner)

    def _drop_lease(self) -> None:
        """The run writes its last commit, or ended: its lease is renewed no more."""
        self._whole_run = False
        self._services.heartbeat.stop(self._beat)
        self._beat = None

    def _renew_lease_if_due(self) -> Steps[None]:
        """Between retry attempts: renew the lease once half of it has passed.

        *When* is timed with the journal's clock (only its rate matters); the new
        deadline is the database's now plus the lease (:mod:`chttp_client.leases`).
        """
        if not self._stored:
            return
        services = self._services
        now = services.clock()
        last = self._lease_renewed_at
        if last is not None and now - last < services.lease / 2:
            return
        yield from self._journal(services.store.renew_lease, self.oplog_id, self._owner,
                                 now=now, lease=services.lease)
        self._lease_renewed_at = now
