"""Unreadable oplogs are quarantined, never fatal: how they are reported.

An oplog holding a record this code cannot read (text that is not JSON, a tag from a
newer version, a value of the wrong shape: :class:`~chttp_client.codec.CodecError`) is
left exactly as it is and never run — not abandoned, because the record may be fixed
(a hand edit undone, a renamed class restored) and then the oplog resumes like any
other; ``chttp-client abandon`` ends it for good. Everything else goes on:
``Journal.resume_all()`` resumes the other oplogs and reports each unreadable one with
the status ``unreadable`` (:data:`~chttp_client.records.OPLOG_UNREADABLE`), ``list``
shows it, ``show`` prints its raw row with the decode error.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from chttp_client.records import OPLOG_UNREADABLE

__all__ = ["log_unreadable", "unreadable_ids"]

log = logging.getLogger("chttp_client")

#: How many ids one log line names at most (the rest are counted).
_SHOWN = 20


def unreadable_ids(outcomes: Sequence[Any]) -> list[str]:
    """The ids of the ``unreadable`` outcomes of a ``resume_all()``."""
    return [outcome.oplog_id for outcome in outcomes if outcome.status == OPLOG_UNREADABLE]


def log_unreadable(outcomes: Sequence[Any]) -> None:
    """One WARNING with the count and the ids of the quarantined oplogs, if any."""
    ids = unreadable_ids(outcomes)
    if not ids:
        return
    more = f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    log.warning("chttp: %d unreadable oplog(s) quarantined (left open, not run): %s%s; "
                "`chttp-client show` prints each raw row, `chttp-client abandon` ends one",
                len(ids), ", ".join(ids[:_SHOWN]), more)
