"""Journal retention: removing oplogs nobody can need any more, in bounded batches.

A finished oplog (``done``/``failed``) is only kept so that :meth:`Journal.resume` can
return its recorded result and ``chttp-client show`` can explain it; nothing replays it.
A receiver handler's oplog (:mod:`chttp_client.incoming`, ids ``in-…``) is never marked
done: it is replayed by a *retry of its incoming message*, and no such retry can arrive
once the receiver has forgotten that message: docs/protocol.rst §4 has senders stop retrying
(default after 1 day) well before the receiver's retention (default 15 days), and an
older retry is refused with 412 ``message-too-old``. So:

* a finished oplog goes once its completion is older than ``older_than``, unless one of
  its answered sends still waits for its acknowledgement (``DELETE`` on
  ``X-Message-URL``, retried by ``resume_all()``); then it stays until ``horizon``,
  when the receiver has forgotten the message and the DELETE would only meet a 404;
* a handler oplog goes once its *last activity* is older than ``horizon`` (default: the
  receiver's default retention, 15 days; pass the receiver's own ``retention`` if it
  differs), and never while a live run holds its lease (by the database's clock, like
  every lease: :mod:`chttp_client.leases`);
* an abandoned oplog (``Journal.abandon``, stored as ``failed`` with its reason) goes
  like a failed one;
* an ordinary open oplog is never removed: it is unfinished work for ``resume_all()``.

Nothing younger than ``older_than`` is ever removed (the incoming and acknowledgement
horizons are ``max(older_than, horizon)``). Ages are measured on
``chttp_oplogs.updated_at`` (migration 0003), indexed.

Each batch is its own short transaction: pick up to ``batch_size`` ids (on PostgreSQL
with ``FOR UPDATE SKIP LOCKED``, so the purge never waits for nor blocks a run that holds
a row), delete their steps, then the oplogs. SQLite's ``BEGIN IMMEDIATE`` serialises it
with every other writer instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, delete, exists, func, not_, or_, select
from sqlalchemy.sql.elements import ColumnElement

from chttp_client.leases import database_now
from chttp_client.records import INCOMING_PREFIX
from chttp_core.schema import (
    KIND_SEND,
    OPLOG_DONE,
    OPLOG_FAILED,
    STEP_DONE,
    oplog_steps,
    oplogs,
)

__all__ = ["RECEIVER_RETENTION", "purge", "kept", "unacknowledged"]

#: The receiver's default retention (docs/protocol.rst §4): a message is remembered this long.
RECEIVER_RETENTION = timedelta(days=15)


def _pending_ack() -> ColumnElement[bool]:
    """The oplog has an answered send whose acknowledgement is not recorded yet."""
    return exists().where(
        oplog_steps.c.oplog_id == oplogs.c.id,
        oplog_steps.c.kind == KIND_SEND,
        oplog_steps.c.state == STEP_DONE,
        oplog_steps.c.message_url.is_not(None),
        oplog_steps.c.acknowledged_at.is_(None),
    )


def kept(engine: Engine, *, now: datetime, older_than: timedelta,
         horizon: timedelta = RECEIVER_RETENTION) -> dict[str, int]:
    """What a purge with these ages keeps although it is older than ``older_than``, and why.

    ``unacknowledged``: finished oplogs with an answer still waiting for its DELETE (kept
    until ``horizon``); ``horizon``: receiver handlers' oplogs younger than ``horizon``.
    So that ``chttp-client purge`` can say why finished oplogs stayed.
    """
    cutoff, long_cutoff = now - older_than, now - max(older_than, horizon)
    recent = and_(oplogs.c.updated_at < cutoff, oplogs.c.updated_at >= long_cutoff)
    count = select(func.count()).select_from(oplogs)
    with engine.connect() as connection:
        waiting = connection.execute(count.where(
            recent, oplogs.c.function != INCOMING_PREFIX,
            oplogs.c.state.in_((OPLOG_DONE, OPLOG_FAILED)), _pending_ack())).scalar_one()
        handlers = connection.execute(count.where(
            recent, oplogs.c.function == INCOMING_PREFIX)).scalar_one()
    return {"unacknowledged": int(waiting), "horizon": int(handlers)}


def unacknowledged(engine: Engine, ids: list[str]) -> set[str]:
    """Those of ``ids`` that hold an answered send not acknowledged yet (``list`` marks them)."""
    found: set[str] = set()
    with engine.connect() as connection:
        for start in range(0, len(ids), 500):  # SQLite's bound on query parameters
            found.update(connection.execute(select(oplogs.c.id).where(
                oplogs.c.id.in_(ids[start:start + 500]), _pending_ack())).scalars())
    return found


def purge(
    engine: Engine,
    *,
    # The journal's clock now (ages; a lease's expiry is read with the database's clock).
    now: datetime,
    older_than: timedelta,
    # Handler oplogs and unacknowledged answers: kept this long after their last activity.
    horizon: timedelta = RECEIVER_RETENTION,
    # Oplogs deleted per transaction.
    batch_size: int = 1000,
    # Stop after this many batches (None: until nothing is left to purge).
    max_batches: int | None = None,
) -> int:
    """Delete purgeable oplogs and their steps (see the module docstring); return how many.

    The caller has brought the schema up to date (``Journal.purge`` does).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if older_than < timedelta(0) or horizon < timedelta(0):
        raise ValueError("older_than and horizon must not be negative")
    cutoff = now - older_than
    long_cutoff = now - max(older_than, horizon)
    pending_ack = _pending_ack()
    finished = and_(
        oplogs.c.function != INCOMING_PREFIX,
        oplogs.c.state.in_((OPLOG_DONE, OPLOG_FAILED)),
        or_(oplogs.c.updated_at < long_cutoff, not_(pending_ack)),
    )
    incoming = and_(
        oplogs.c.function == INCOMING_PREFIX,
        oplogs.c.updated_at < long_cutoff,
        or_(oplogs.c.lease_expires_at.is_(None), oplogs.c.lease_expires_at <= database_now(engine.dialect)),
    )
    victims = (
        select(oplogs.c.id)
        .where(oplogs.c.updated_at < cutoff, or_(finished, incoming))
        .order_by(oplogs.c.updated_at)
        .limit(batch_size)
    )
    if engine.dialect.name == "postgresql":
        victims = victims.with_for_update(skip_locked=True, of=oplogs)
    total = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        with engine.begin() as connection:
            ids = list(connection.execute(victims).scalars())
            if ids:
                connection.execute(delete(oplog_steps).where(oplog_steps.c.oplog_id.in_(ids)))
                connection.execute(delete(oplogs).where(oplogs.c.id.in_(ids)))
        total += len(ids)
        batches += 1
        if len(ids) < batch_size:
            break
    return total
