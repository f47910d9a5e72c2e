"""The journal's database gone in the middle of a run: the library's own error, never a driver's.

A run writes to its journal before anything that depends on the write leaves the
process (:mod:`chttp_client.context`). When the database cannot take such a write — the
server crashed, the connection dropped, the pool timed out, SQLite's file turned
read-only — the caller used to get a raw ``sqlalchemy.exc.OperationalError`` from deep
inside. :func:`journal_write` turns every such failure
(:func:`chttp_core.db.is_disconnect`) into
:class:`~chttp_client.errors.JournalUnavailable` naming the oplog and what was not
recorded; the run stops (the context records nothing more) and a later ``resume``
picks the function up from its record. A bad query (``IntegrityError`` …) is not an
outage and passes through unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy.exc import SQLAlchemyError

from chttp_client.errors import JournalUnavailable
from chttp_core.db import is_disconnect

__all__ = ["journal_write", "JournalWrite"]


class JournalWrite:
    """How far a write inside :func:`journal_write` got: the block sets ``committing``
    once its last statement ran, so a failure after it is the COMMIT's."""

    def __init__(self) -> None:
        self.committing = False


@contextmanager
def journal_write(oplog_id: str, unrecorded: Callable[[], tuple[int | None, str]],
                  *, created: bool = True) -> Iterator[JournalWrite]:
    """Raise :class:`JournalUnavailable` for a database outage inside the block.

    ``unrecorded()`` gives the step number (or None) and a description of what the
    block was recording; it is only called when the write failed. ``created``: the
    oplog's row already exists (False for its first write, which then left nothing to
    resume — unless it failed at its COMMIT, which the server may have made: then the
    error's ``created`` is None, unknown).
    """
    write = JournalWrite()
    try:
        yield write
    except SQLAlchemyError as error:
        if not is_disconnect(error):
            raise
        step, what = unrecorded()
        first_line = (str(getattr(error, "orig", None) or error).strip().splitlines() or [""])[0]
        detail = f"{type(error).__name__}: {first_line[:200]}"
        known = None if not created and write.committing else created
        raise JournalUnavailable(oplog_id, step, what, detail, known) from error
