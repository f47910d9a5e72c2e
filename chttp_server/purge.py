"""Deleting expired message rows: batches of short transactions beside live traffic.

Housekeeping, not a step of any request: :meth:`chttp_server.store.MessageStore.purge`
(``chttp-server purge``, the console, Django's ``chttp_purge``) calls it.
"""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import Engine, delete, select, tuple_

from chttp_core.schema import messages

__all__ = ["purge_expired"]


def purge_expired(engine: Engine, *, now: datetime, skip_locked: bool, batch_size: int = 1000,
                  max_batches: int | None = None, pause: float = 0.0,
                  share: float | None = None) -> int:
    """Delete rows expired at ``now`` in batches of ``batch_size``; the number deleted.

    ``skip_locked`` (PostgreSQL): each batch is chosen with ``FOR UPDATE SKIP LOCKED``, so
    the purge never waits on, nor blocks, a live claim. ``pause``: seconds to sleep
    between batches (like PostgreSQL's ``vacuum_cost_delay``).

    ``share`` paces the purge by what it observes instead of a fixed pause: the purge
    spends at most that fraction of the wall time deleting and sleeps the rest, each
    pause measured from the batch before it (``batch seconds × (1/share − 1)``). A
    store busy with live traffic makes batches slower, so the purge backs off by
    itself, and on an idle store it goes quickly; a fixed pause is either too long
    for an idle store or too short for a busy one. Both given: the longer pause.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if pause < 0:
        raise ValueError("pause must not be negative")
    if share is not None and not 0 < share <= 1:
        raise ValueError("share must be above 0 and at most 1")
    total = 0
    batches = 0
    last_batch = 0.0
    while max_batches is None or batches < max_batches:
        wait = max(pause, last_batch * (1 / share - 1) if share is not None else 0.0)
        if batches and wait:
            time.sleep(wait)
        began = time.monotonic()
        victims = (
            select(messages.c.scope, messages.c.message_id)
            .where(messages.c.expires_at <= now)
            .limit(batch_size)
        )
        if skip_locked:
            victims = victims.with_for_update(skip_locked=True)
        with engine.begin() as connection:
            deleted = connection.execute(
                delete(messages).where(tuple_(messages.c.scope, messages.c.message_id).in_(victims))
            ).rowcount
        last_batch = time.monotonic() - began
        total += deleted
        batches += 1
        if deleted < batch_size:
            break
    return total
