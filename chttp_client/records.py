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

__all__ = ["StepRecord", "OplogInfo", "INCOMING_PREFIX", "CELERY_PREFIX", "OPLOG_ABANDONED"]

#: Oplogs of receiver handlers (chttp_client.incoming) are driven by incoming retries,
#: never by resume_all().
INCOMING_PREFIX = "chttp.incoming"

#: Oplogs of Celery tasks (chttp_client.celery, ``celery:<task name>``, keyed by the
#: task id) are driven by Celery's redelivery and retries, never by resume_all().
CELERY_PREFIX = "celery:"

#: The state an abandoned (dead-lettered) oplog reports. Stored as ``failed`` with an
#: ``abandoned_reason`` (migration 0004 says why).
OPLOG_ABANDONED = "abandoned"


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

    def caller_headers(self) -> list[list[str]] | None:
        """A send's request headers as the function gave them (not the library's own)."""
        if self.kind != KIND_SEND or self.request is None:
            return None
        return [[str(name), str(value)] for name, value in self.request.get("headers", [])]

    def matches(self, other: StepRecord) -> bool:
        """True if ``other`` asks for the same step: kind, name, body digest and headers.

        Headers count because the receiver sees them: a replay that would send other
        headers under the recorded id is not the recorded message.
        """
        return ((self.kind, self.name, self.fingerprint, self.caller_headers())
                == (other.kind, other.name, other.fingerprint, other.caller_headers()))

    def describe(self, *, headers: bool = False) -> str:
        """The step as a :class:`~chttp_client.errors.NonDeterminismError` names it."""
        if self.kind == KIND_SEND:
            preview = ""
            if self.request is not None and "body" in self.request:
                try:
                    body = codec.decode(self.request["body"])
                except codec.CodecError:  # a corrupted record still diverges: say so
                    preview = " unreadable"
                else:
                    preview = f" {body[:80]!r}{'…' if len(body) > 80 else ''}"
            text = f"send {self.name} (body sha256 {(self.fingerprint or '')[:12]}…{preview})"
            if headers:
                text += f" with headers {self.caller_headers()}"
            return text
        return f"persist {self.name}"

    def describe_against(self, other: StepRecord) -> str:
        """:meth:`describe`, naming the headers when only they tell the two steps apart."""
        same_but_headers = (self.kind, self.name, self.fingerprint) == (other.kind, other.name, other.fingerprint)
        return self.describe(headers=same_but_headers)


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
    #: Why the oplog was abandoned (``state == "abandoned"``), else None.
    abandoned_reason: str | None = None
    #: Resumes since its last progress (``Journal(max_resume_attempts=…)``).
    resume_attempts: int = 0
