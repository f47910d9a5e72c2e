"""Plain records of the journal: what a step and an oplog look like outside the database.

The store (:mod:`chttp_client.oplog_store`) reads and writes these and nothing else, so
neither the step logic (:mod:`chttp_client.context`) nor a reader (``chttp-client show``)
ever sees a row or a connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chttp_client import codec
from chttp_client.codec import CodecError
from chttp_core.schema import KIND_PERSIST, KIND_SEND, STEP_DONE, STEP_RECORDED

__all__ = [
    "StepRecord",
    "OplogInfo",
    "PendingWrites",
    "INCOMING_PREFIX",
    "CELERY_PREFIX",
    "OPLOG_ABANDONED",
    "OPLOG_UNREADABLE",
    "check_arguments",
    "check_outcome",
    "check_step",
]

#: Oplogs of receiver handlers (chttp_client.incoming) are driven by incoming retries,
#: never by resume_all().
INCOMING_PREFIX = "chttp.incoming"

#: Oplogs of Celery tasks (chttp_client.celery, ``celery:<task name>``, keyed by the
#: task id) are driven by Celery's redelivery and retries, never by resume_all().
CELERY_PREFIX = "celery:"

#: The state an abandoned (dead-lettered) oplog reports. Stored as ``failed`` with an
#: ``abandoned_reason`` (migration 0004 says why).
OPLOG_ABANDONED = "abandoned"

#: The status ``list`` and ``resume_all()`` give an oplog holding a record this code
#: cannot read (:attr:`OplogInfo.unreadable`). Never stored: the oplog is *quarantined*
#: — left exactly as it is, never run — until the record is fixed or it is abandoned.
OPLOG_UNREADABLE = "unreadable"


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
    #: A send's attempts started so far, by every process (counted before each leaves).
    attempts: int = 0

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
    #: Why a record of this oplog cannot be read (its ``arguments`` and ``result`` are
    #: then None), else None. Only listings carry one: reading the oplog itself
    #: (``Journal.get``) raises it.
    unreadable: CodecError | None = None

    @property
    def status(self) -> str:
        """``state``, or ``unreadable`` for an unreadable oplog not yet abandoned."""
        if self.unreadable is not None and self.state != OPLOG_ABANDONED:
            return OPLOG_UNREADABLE
        return self.state


# -- the shapes of records -------------------------------------------------------------
#
# A record that is valid JSON with valid tags can still be of the wrong *shape* — a
# hand-edited ``{"valu": 1}`` — and a reader that used ``.get("value")`` would replay it
# as None, a value the function never saw. Every record is checked when it is read from
# the journal (chttp_client.oplog_store), so a wrong shape is a CodecError naming the
# oplog and the step, exactly like an undecodable value, and the oplog is quarantined.


def _keys(record: object) -> str:
    return repr(sorted(map(str, record))[:5]) if isinstance(record, dict) else type(record).__name__


def check_arguments(arguments: Any, where: str) -> None:
    """Decoded arguments must be ``{"args": [...], "kwargs": {...}}``."""
    if not (isinstance(arguments, dict) and set(arguments) == {"args", "kwargs"}
            and isinstance(arguments["args"], (list, tuple)) and isinstance(arguments["kwargs"], dict)):
        raise CodecError(f"arguments of the wrong shape ({_keys(arguments)}), expected "
                         '{"args": [...], "kwargs": {...}}', where)


def check_outcome(outcome: Any, where: str) -> None:
    """An outcome or result must be ``{"value": v}`` or ``{"error": exception record}``,
    with ``v`` and the record decodable."""
    if not (isinstance(outcome, dict) and len(outcome) == 1
            and set(outcome) <= {"value", "error"}):
        raise CodecError(f"a recorded outcome of the wrong shape ({_keys(outcome)}), expected "
                         '{"value": …} or {"error": …}', where)
    if "value" in outcome:
        codec.decode(outcome["value"], where=where)
        return
    error = outcome["error"]
    if not (isinstance(error, dict) and isinstance(error.get("type"), str)
            and isinstance(error.get("args", []), list) and isinstance(error.get("message", ""), str)):
        raise CodecError(f"a recorded exception of the wrong shape ({_keys(error)})", where)
    codec.decode(error.get("args", []), where=where)


def _pairs(headers: Any) -> bool:
    return isinstance(headers, list) and all(
        isinstance(pair, list) and len(pair) == 2 for pair in headers)


def check_step(step: StepRecord, where: str) -> None:
    """A step read from the journal must be one this code can replay (module comment)."""
    if step.kind == KIND_PERSIST:
        if step.state != STEP_DONE or step.outcome is None:
            raise CodecError(f"a persist step in state {step.state!r} without an outcome", where)
        check_outcome(step.outcome, where)
        return
    if step.kind != KIND_SEND or step.state not in (STEP_RECORDED, STEP_DONE):
        raise CodecError(f"a step of kind {step.kind!r} in state {step.state!r}", where)
    request = step.request
    if not (isinstance(request, dict) and isinstance(request.get("method"), str)
            and isinstance(request.get("url"), str) and _pairs(request.get("headers", []))):
        raise CodecError(f"a send request of the wrong shape ({_keys(request)})", where)
    if not isinstance(codec.decode(request.get("body"), where=where), (bytes, type(None))):
        raise CodecError("a send request whose body is not bytes", where)
    if step.message_id is None or step.first_sent_at is None:
        raise CodecError("a send step without its message id or first-sent time", where)
    if step.state == STEP_RECORDED:
        return
    if step.response is None:
        if step.outcome is None or "error" not in step.outcome:
            raise CodecError("a done send step with neither an answer nor a recorded error", where)
        check_outcome(step.outcome, where)
        return
    response = step.response
    if not (isinstance(response, dict) and isinstance(response.get("status"), int)
            and _pairs(response.get("headers"))):
        raise CodecError(f"a recorded answer of the wrong shape ({_keys(response)})", where)
    if not isinstance(codec.decode(response.get("body"), where=where), (bytes, type(None))):
        raise CodecError("a recorded answer whose body is not bytes", where)


@dataclass
class PendingWrites:
    """What waits for the next commit of a run (:mod:`chttp_client.context` says why)."""

    #: New persist steps, inserted by the next commit.
    steps: list[StepRecord] = field(default_factory=list)
    #: Answered send steps (already stored as ``recorded``), updated to ``done`` by it.
    answers: list[StepRecord] = field(default_factory=list)
    #: ``(step number, X-Message-URL)`` to acknowledge once those answers are durable.
    acks: list[tuple[int, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.steps or self.answers)
