"""``OplogStore``: every SQL statement of the sender's journal, behind plain records.

The store owns the tables ``chttp_oplogs`` and ``chttp_oplog_steps`` (declared in
:mod:`chttp_core.schema`): oplog rows, step rows, leases and acknowledgement marks. It
takes and returns the records of :mod:`chttp_client.records` and the small dataclasses
below, and never sees a context, so the step logic (:mod:`chttp_client.context`) decides
*what* to write and this module only *how*.

Every write of a run is one :class:`Commit`: the oplog row inserted (first write) or our
lease renewed — failing with :class:`~chttp_client.errors.OplogTakenOverError` if
another process took it over, :class:`~chttp_client.errors.OplogAbandonedError` if it
was abandoned meanwhile — then new steps, answered steps, the result if the run ends, and
the acknowledgement marks gathered since the previous commit, in one transaction.

Leases and acknowledgement claims are given as *durations*: their deadlines are
computed and compared in SQL with the database's clock
(:func:`~chttp_client.leases.lease_deadline`, :func:`~chttp_client.leases.database_now`),
never with a client's, so hosts whose clocks disagree still agree on who runs an
oplog. Every other time (``now``: created, updated, finished, acknowledged) is the
journal's clock, as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
import builtins
from typing import Any, Iterator, Sequence

from sqlalchemy import Connection, Engine, and_, insert, or_, select, update

from chttp_client import retention
from chttp_client.codec import CodecError
from chttp_client.errors import JournalError, OplogAbandonedError, OplogBusyError, OplogTakenOverError
from chttp_client.leases import (
    LiveLease,
    database_now,
    expire_leases,
    lease_deadline,
    live_lease,
    owner_is_gone,
)
from chttp_client.oplog_rows import oplog_info, raw_rows, readable_steps, step_record, step_values
from chttp_client.outage import journal_write
from chttp_client.records import OPLOG_ABANDONED, OplogInfo, StepRecord
from chttp_core.schema import KIND_SEND, OPLOG_FAILED, OPLOG_OPEN, STEP_DONE, oplog_steps, oplogs

__all__ = ["OplogStore", "Commit", "NewOplog", "Finish", "AckMark", "PendingAck"]


@dataclass(frozen=True)
class NewOplog:
    """The row of an oplog's first write."""

    function: str
    version: int
    #: ``codec.dumps({"args": [...], "kwargs": {...}})``
    arguments: str


@dataclass(frozen=True)
class Finish:
    """How a run ended: ``state`` done/failed and the result record."""

    state: str
    result: dict[str, Any]


@dataclass(frozen=True)
class AckMark:
    """How our DELETE of step ``number``'s message went, at ``at``.

    ``done``: the receiver took it (the step is marked acknowledged); otherwise our
    claim on the acknowledgement is released for a later ``resume_all()`` to retry.
    """

    oplog_id: str
    number: int
    at: datetime
    done: bool = True


@dataclass(frozen=True)
class PendingAck:
    """An answered message not yet acknowledged."""

    oplog_id: str
    number: int
    url: str


@dataclass
class Commit:
    """One transaction of a run (see the module docstring)."""

    oplog_id: str
    owner: str | None
    now: datetime
    #: How long the lease lasts from this commit, by the database's clock.
    lease: timedelta
    #: Insert the oplog row (first write of a run) instead of renewing the lease.
    new: NewOplog | None = None
    #: New steps.
    inserts: Sequence[StepRecord] = ()
    #: Send steps stored as ``recorded`` and now answered.
    answers: Sequence[StepRecord] = ()
    finish: Finish | None = None
    acks: Sequence[AckMark] = field(default_factory=list)
    #: Claim the acknowledgement of each answer with a message URL for this long, by
    #: the database's clock (this process will send it); None: leave it to ``resume_all()``.
    ack_claim: timedelta | None = None


def _unrecorded(commit: Commit) -> tuple[int | None, str]:
    """What a commit that failed did not record (:class:`JournalUnavailable` names it)."""
    if commit.finish is not None:
        return None, f"the result ({commit.finish.state})"
    steps = [*commit.answers, *commit.inserts]
    if not steps:
        return None, "the acknowledgement marks"
    last = steps[-1]
    what = "the answer of" if last in commit.answers else ""
    return last.number, f"{what} step {last.number} ({last.kind} {last.name})".strip()


def _state_is(state: str) -> Any:
    """The condition for an :class:`OplogInfo` state (abandoned is stored as failed)."""
    if state == OPLOG_ABANDONED:
        return and_(oplogs.c.state == OPLOG_FAILED, oplogs.c.abandoned_reason.is_not(None))
    if state == OPLOG_FAILED:
        return and_(oplogs.c.state == OPLOG_FAILED, oplogs.c.abandoned_reason.is_(None))
    return oplogs.c.state == state


class OplogStore:
    """The journal's tables on one engine (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __repr__(self) -> str:
        return f"<OplogStore {self.engine.url.render_as_string(hide_password=True)}>"

    # -- reading ---------------------------------------------------------------------------

    def list(self, *, state: str | None = None, limit: int | None = None) -> list[OplogInfo]:
        """Oplogs oldest first, without their steps; an unreadable ``arguments`` or
        ``result`` is carried in ``OplogInfo.unreadable``, never raised."""
        query = select(oplogs).order_by(oplogs.c.created_at, oplogs.c.id)
        if state is not None:
            query = query.where(_state_is(state))
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [oplog_info(row, strict=False) for row in connection.execute(query)]

    def get(self, oplog_id: str, *, strict: bool = True) -> OplogInfo | None:
        """One oplog with its steps, ``None`` if there is none.

        An unreadable record raises :class:`~chttp_client.codec.CodecError` naming it
        (``strict``), so nothing replays a record it cannot read; with ``strict=False``
        the oplog comes back with the first such error in ``OplogInfo.unreadable`` and
        only its readable steps (for ``abandon``, never for a replay).
        """
        with self.engine.connect() as connection:
            row = connection.execute(select(oplogs).where(oplogs.c.id == oplog_id)).first()
            if row is None:
                return None
            if strict:
                return oplog_info(row, tuple(self._steps(connection, oplog_id)))
            steps, errors = readable_steps(connection, oplog_id)
            return oplog_info(row, steps, strict=False, unreadable=errors[0] if errors else None)

    def unreadable_steps(self, oplog_ids: Sequence[str]) -> dict[str, CodecError]:
        """The first unreadable step of each of ``oplog_ids`` that has one."""
        found: dict[str, CodecError] = {}
        with self.engine.connect() as connection:
            for oplog_id in oplog_ids:
                errors = readable_steps(connection, oplog_id)[1]
                if errors:
                    found[oplog_id] = errors[0]
        return found

    def raw(self, oplog_id: str) -> tuple[dict[str, Any], builtins.list[dict[str, Any]]] | None:
        """The oplog's row and its step rows as stored, undecoded (``chttp-client show``
        of an unreadable oplog); None if there is none."""
        with self.engine.connect() as connection:
            return raw_rows(connection, oplog_id)

    def arguments(self, oplog_id: str) -> str:
        """The recorded arguments of ``oplog_id``, as stored (codec text)."""
        with self.engine.connect() as connection:
            return str(connection.execute(
                select(oplogs.c.arguments).where(oplogs.c.id == oplog_id)).scalar_one())

    @staticmethod
    def _steps(connection: Connection, oplog_id: str) -> Iterator[StepRecord]:
        rows = connection.execute(
            select(oplog_steps).where(oplog_steps.c.oplog_id == oplog_id)
            .order_by(oplog_steps.c.number))
        for row in rows:
            yield step_record(row)

    # -- writing a run ---------------------------------------------------------------------

    def commit(self, commit: Commit) -> None:
        """Write ``commit`` in one transaction (see the module docstring)."""
        with journal_write(commit.oplog_id, lambda: _unrecorded(commit), created=commit.new is None) \
                as write, self.engine.begin() as connection:
            self._open(connection, commit)
            claim_until = (None if commit.ack_claim is None
                           else lease_deadline(connection.dialect, commit.ack_claim))
            if commit.inserts:
                connection.execute(insert(oplog_steps), [
                    {"oplog_id": commit.oplog_id, "number": step.number, **step_values(step)}
                    for step in commit.inserts
                ])
            for step in commit.answers:
                claim = claim_until if step.message_url is not None else None
                updated = connection.execute(
                    update(oplog_steps)
                    .where(oplog_steps.c.oplog_id == commit.oplog_id,
                           oplog_steps.c.number == step.number)
                    .values(**step_values(step), ack_claimed_until=claim)
                ).rowcount
                if updated != 1:  # an answer always follows its own intent commit
                    raise JournalError(f"oplog {commit.oplog_id} has no step {step.number} to answer")
            if commit.finish is not None:
                connection.execute(
                    update(oplogs).where(oplogs.c.id == commit.oplog_id).values(
                        state=commit.finish.state, result=json.dumps(commit.finish.result),
                        finished_at=commit.now, updated_at=commit.now,
                        lease_owner=None, lease_expires_at=None,
                    )
                )
            self._mark(connection, commit.acks)
            write.committing = True   # what fails from here on is the COMMIT (begin's exit)

    def _open(self, connection: Connection, commit: Commit) -> None:
        """Insert the oplog row (first write of a run) or renew our lease on it."""
        if commit.new is not None:
            connection.execute(insert(oplogs).values(
                id=commit.oplog_id, function=commit.new.function, version=commit.new.version,
                arguments=commit.new.arguments, state=OPLOG_OPEN, lease_owner=commit.owner,
                lease_expires_at=lease_deadline(connection.dialect, commit.lease),
                created_at=commit.now, updated_at=commit.now,
            ))
            return
        self._renew(connection, commit.oplog_id, commit.owner, commit.now, commit.lease)

    @staticmethod
    def _renew(connection: Connection, oplog_id: str, owner: str | None,
               now: datetime, lease: timedelta, progress: bool = True) -> None:
        # A write of the run is progress: its resumes start counting again (not a
        # counted attempt: a crash loop during a send's attempts is still one). Renewing
        # does not ask whether the lease expired meanwhile: only a taker ends a lease.
        values: dict[str, Any] = dict(lease_expires_at=lease_deadline(connection.dialect, lease),
                                      updated_at=now)
        if progress:
            values["resume_attempts"] = 0
        renewed = connection.execute(
            update(oplogs).where(oplogs.c.id == oplog_id, oplogs.c.lease_owner == owner).values(values)
        ).rowcount
        if renewed != 1:
            row = connection.execute(
                select(oplogs.c.state, oplogs.c.lease_owner, oplogs.c.abandoned_reason)
                .where(oplogs.c.id == oplog_id)).first()
            if row is not None and row.abandoned_reason is not None:
                # An operator (or resume_all) dead-lettered it under us: say so, with
                # their reason, not "taken over" as if another worker had finished it.
                raise OplogAbandonedError(oplog_id, row.abandoned_reason)
            state = row.state if row is not None else "purged"
            raise OplogTakenOverError(oplog_id, row.lease_owner if row is not None else None, state)

    # -- leases ----------------------------------------------------------------------------

    def renew_lease(self, oplog_id: str, owner: str, *, now: datetime, lease: timedelta,
                    progress: bool = True) -> None:
        """Extend our lease to ``lease`` from the database's now (:meth:`_renew`'s errors)."""
        with journal_write(oplog_id, lambda: (None, "the lease renewal of its run")), \
                self.engine.begin() as connection:
            self._renew(connection, oplog_id, owner, now, lease, progress)

    def count_attempt(self, oplog_id: str, owner: str, number: int, attempts: int, *,
                      now: datetime, lease: timedelta) -> None:
        """Record that attempt ``attempts`` of send step ``number`` is about to leave.

        Renews our lease in the same transaction, so an oplog taken over or abandoned
        meanwhile stops the send before the attempt (:meth:`_renew`'s errors).
        """
        with journal_write(oplog_id, lambda: (number, f"attempt {attempts} of step {number}")), \
                self.engine.begin() as connection:
            self._renew(connection, oplog_id, owner, now, lease, progress=False)
            connection.execute(update(oplog_steps).where(
                oplog_steps.c.oplog_id == oplog_id, oplog_steps.c.number == number).values(attempts=attempts))

    def take_lease(self, oplog_id: str, owner: str, *, now: datetime, lease: timedelta,
                   force: bool = False, count_attempt: bool = False) -> int:
        """Lease the open oplog to ``owner`` for ``lease`` (compare-and-swap on the owner we saw).

        The lease seen is free if it expired by the *database's* clock — the swap
        itself re-checks that in SQL, so an owner renewing meanwhile keeps it — or if
        its owner is a process of this host that no longer exists. ``force`` takes it
        even from a live owner; ``count_attempt`` counts a resume. Returns the resumes
        counted since the run last made progress, this one included.
        :class:`OplogBusyError` if it is held (or finished meanwhile, or a concurrent
        resumer won the swap).
        """
        with journal_write(oplog_id, lambda: (None, "its lease")), self.engine.begin() as connection:
            db_now = database_now(connection.dialect)
            expired = or_(oplogs.c.lease_expires_at.is_(None), oplogs.c.lease_expires_at <= db_now)
            row = connection.execute(
                select(oplogs.c.state, oplogs.c.lease_owner, oplogs.c.resume_attempts,
                       expired.label("expired"))
                .where(oplogs.c.id == oplog_id)
            ).one()
            if row.state != OPLOG_OPEN:
                raise OplogBusyError(oplog_id, "nobody: it finished meanwhile")
            seen = row.lease_owner
            condition = oplogs.c.lease_owner.is_(None) if seen is None else oplogs.c.lease_owner == seen
            if seen is not None and not force and not owner_is_gone(seen):
                if not row.expired:
                    raise OplogBusyError(oplog_id, seen)
                condition = and_(condition, expired)
            attempts = (row.resume_attempts or 0) + (1 if count_attempt else 0)
            taken = connection.execute(
                update(oplogs)
                .where(oplogs.c.id == oplog_id, oplogs.c.state == OPLOG_OPEN, condition)
                .values(lease_owner=owner, lease_expires_at=lease_deadline(connection.dialect, lease),
                        updated_at=now, resume_attempts=attempts)
            ).rowcount
        if taken != 1:
            raise OplogBusyError(oplog_id, "a concurrent resumer")
        return attempts

    def expire_leases(self, oplog_id: str | None = None) -> int:
        """End leases now (:func:`chttp_client.leases.expire_leases`); how many oplogs'."""
        return expire_leases(self.engine, oplog_id)

    def live_lease(self, oplog_id: str) -> LiveLease | None:
        """Who runs ``oplog_id`` right now (:func:`~chttp_client.leases.live_lease`)."""
        with self.engine.connect() as connection:
            return live_lease(connection, oplog_id)

    def release_lease(self, oplog_id: str, owner: str) -> None:
        """Give the lease up (a refused run), if we still hold it."""
        with self.engine.begin() as connection:
            connection.execute(
                update(oplogs).where(oplogs.c.id == oplog_id, oplogs.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    def abandon(self, oplog_id: str, *, reason: str, result: dict[str, Any], now: datetime) -> bool:
        """Dead-letter the open oplog: stored as failed with ``reason``; False if not open."""
        with self.engine.begin() as connection:
            return connection.execute(
                update(oplogs).where(oplogs.c.id == oplog_id, oplogs.c.state == OPLOG_OPEN).values(
                    state=OPLOG_FAILED, abandoned_reason=reason, result=json.dumps(result),
                    finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None,
                )
            ).rowcount == 1

    # -- acknowledgements ------------------------------------------------------------------

    def claim_pending_acks(self, *, claim: timedelta) -> builtins.list[PendingAck]:
        """Claim, for ``claim``, every answered message nobody acknowledged or claimed.

        Each claim is a compare-and-swap on the claim we saw, so of several processes
        running ``resume_all()`` at once exactly one sends each DELETE; a claim of a
        process that died lapses at its time — by the database's clock, like a lease.
        """
        dialect = self.engine.dialect
        free = or_(oplog_steps.c.ack_claimed_until.is_(None),
                   oplog_steps.c.ack_claimed_until <= database_now(dialect))
        unacknowledged = and_(
            oplog_steps.c.kind == KIND_SEND, oplog_steps.c.state == STEP_DONE,
            oplog_steps.c.message_url.is_not(None), oplog_steps.c.acknowledged_at.is_(None), free)
        query = select(oplog_steps.c.oplog_id, oplog_steps.c.number, oplog_steps.c.message_url).where(
            unacknowledged)
        with self.engine.connect() as connection:
            candidates = [PendingAck(row.oplog_id, row.number, row.message_url)
                          for row in connection.execute(query)]
        claimed = []
        for pending in candidates:
            with self.engine.begin() as connection:
                won = connection.execute(
                    update(oplog_steps)
                    .where(oplog_steps.c.oplog_id == pending.oplog_id,
                           oplog_steps.c.number == pending.number, unacknowledged)
                    .values(ack_claimed_until=lease_deadline(dialect, claim))
                ).rowcount
            if won == 1:
                claimed.append(pending)
        return claimed

    def mark_acknowledged(self, marks: Sequence[AckMark]) -> None:
        """Record acknowledgements outside a run's commit (nothing to mark: no transaction)."""
        if not marks:
            return
        with self.engine.begin() as connection:
            self._mark(connection, marks)

    @staticmethod
    def _mark(connection: Connection, marks: Sequence[AckMark]) -> None:
        for mark in marks:
            connection.execute(
                update(oplog_steps)
                .where(oplog_steps.c.oplog_id == mark.oplog_id, oplog_steps.c.number == mark.number)
                .values({"acknowledged_at": mark.at} if mark.done else {"ack_claimed_until": None})
            )

    # -- retention -------------------------------------------------------------------------

    def purge(self, *, now: datetime, older_than: timedelta, horizon: timedelta,
              batch_size: int, max_batches: int | None) -> int:
        """Delete purgeable oplogs and their steps (:mod:`chttp_client.retention`)."""
        return retention.purge(self.engine, now=now, older_than=older_than, horizon=horizon,
                               batch_size=batch_size, max_batches=max_batches)
