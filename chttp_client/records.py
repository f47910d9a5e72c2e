"""Plain records of the journal: what a step and an oplog look like outside the database.

The store (:mod:`chttp_client.oplog_store`) reads and writes these and nothing else, so
neither the step logic (:mod:`chttp_client.context`) nor a reader (``chttp-client show``)
ever sees a row or a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chttp_client import codec
from chttp_core.schema import KIND_SEND

__all__ = ["StepRecord", "OplogInfo", "INCOMING_PREFIX"]

#: Oplogs of receiver handlers (chttp_client.incoming) are driven by incoming retries,
#: never by resume_all().
INCOMING_PREFIX = "chttp.incoming"


@dataclass
class StepRecord:
    """One step of an oplog, as stored in ``chttp_oplog_steps``."""

    number: int
    kind: str
    name: str
    state: str
    outcome: dict[str, Any] | None = None
    message_id: str | None = None
    fingerprint: str | None = None
    request: dict[str, Any] | None = None
    first_sent_at: datetime | None = None
    response: dict[str, Any] | None = None
    message_url: str | None = None
    acknowledged_at: datetime | None = None

    def describe(self) -> str:
        """The step as a :class:`~chttp_client.errors.NonDeterminismError` names it."""
        if self.kind == KIND_SEND:
            preview = ""
            if self.request is not None and "body" in self.request:
                body = codec.decode(self.request["body"])
                preview = f" {body[:80]!r}{'…' if len(body) > 80 else ''}"
            return f"send {self.name} (body sha256 {(self.fingerprint or '')[:12]}…{preview})"
        return f"persist {self.name}"


@dataclass(frozen=True)
class OplogInfo:
    """An oplog as ``list``/``show`` print it."""

    id: str
    function: str
    version: int
    state: str
    arguments: Any
    result: Any
    lease_owner: str | None
    created_at: datetime
    steps: tuple[StepRecord, ...] = ()
