"""Exceptions of the sending half.

::

    ChttpClientError
    ├── JournalError                   the oplog cannot be used as asked
    │   ├── NonDeterminismError        a replay asked for another step than the recorded one
    │   │   └── ConcurrentStepsError   two steps of one run were in flight at once
    │   ├── UnknownFunctionError       no registered function/version for an open oplog
    │   ├── OplogBusyError             another process holds the oplog's lease
    │   │   └── OplogTakenOverError    … it took our run's lease over; the run goes on there
    │   ├── OplogAbandonedError        the oplog was dead-lettered (by an operator, too,
    │   │                              under a live run) and is not run again
    │   ├── JournalUnavailable         the journal's database went away mid-run; a step was
    │   │                              not recorded, and resume picks the function up later
    │   └── (codec.CodecError)         a record cannot be read (not JSON, unknown tag, wrong
    │                                  shape): the oplog is quarantined, never replayed
    └── SendError                      a certified send ended without a usable answer
        ├── DeadlineExceeded           retried until the send's deadline passed
        │   └── RunDeadlineExceeded    … only this run's bound passed: not recorded
    ├── UnhealableSendError        an invalid URL, an unsupported scheme, TLS to a plain-HTTP
    │                              port, a certificate error: definitive at once
        └── ProtocolAnswerError        the receiver answered with a protocol error (§4)
            ├── MessageRejectedError   400 invalid-message-id / message-id-required
            ├── MessageGoneError       410 message-acknowledged / -expired / -outcome-unknown
            ├── MessageTooOldError     412 message-too-old
            ├── MessageIdReusedError   422 message-id-reused
            └── ResponseTooLargeError  500 response-too-large (not retryable, §4)

The protocol answers end in ``Error`` so that they never share a name with the
receiver's exceptions of the same situation (``chttp_server.errors.MessageGone`` is the
receiver *refusing*; :class:`MessageGoneError` is the sender *being refused*).

Every exception keeps its constructor arguments in ``args`` so that it pickles and so that
the oplog can record it as ``type + args`` and rebuild it on replay
(:mod:`chttp_client.codec`). A protocol answer also carries the recorded ``response``.
"""

from __future__ import annotations

from typing import Any

from chttp_core.errors import ChttpError
from chttp_core.wire import Problem

__all__ = [
    "ChttpClientError",
    "JournalError",
    "NonDeterminismError",
    "ConcurrentStepsError",
    "UnknownFunctionError",
    "OplogBusyError",
    "OplogTakenOverError",
    "OplogAbandonedError",
    "JournalUnavailable",
    "SendError",
    "DeadlineExceeded",
    "RunDeadlineExceeded",
    "UnhealableSendError",
    "ProtocolAnswerError",
    "MessageRejectedError",
    "MessageGoneError",
    "MessageTooOldError",
    "MessageIdReusedError",
    "ResponseTooLargeError",
    "protocol_error_for",
]


class ChttpClientError(ChttpError):
    """Root of every error the sending half raises."""


class JournalError(ChttpClientError):
    """The journal cannot do what was asked with an oplog."""


class NonDeterminismError(JournalError):
    """A replayed function asked for a different step than the one its oplog recorded.

    ``expected`` describes the recorded step, ``got`` the one the code asked for (for
    example ``"send POST http://x/escrow body sha256 ab12…"`` vs the same with another
    digest). The oplog is left exactly as it was: fix the code (or register the version
    that wrote the oplog) and resume again.
    """

    def __init__(self, oplog_id: str, step: int, expected: str, got: str) -> None:
        super().__init__(oplog_id, step, expected, got)
        self.oplog_id = oplog_id
        self.step = step
        self.expected = expected
        self.got = got

    def __str__(self) -> str:
        return (
            f"oplog {self.oplog_id} step {self.step} diverged from its record: "
            f"recorded {self.expected}, but the code now asks for {self.got}"
        )


class ConcurrentStepsError(NonDeterminismError):
    """A step started while another step of the same run was still in flight.

    ``asyncio.gather(chttp_context.post(a), chttp_context.post(b))`` inside one
    ``async def`` resumable function: which send gets which step number, and what each
    intent commit carries, would depend on scheduling, so a resumed run could not be
    checked against its record. Refused instead, and the run is poisoned like a
    divergent replay (nothing more is recorded; ``resume_all()`` abandons the oplog).
    Await the sends one after the other, or make each its own ``@resumable`` function
    (each has its own oplog, and those may run under one ``gather``). ``in_flight``
    and ``asked`` describe the two steps; ``step`` is the number the second would have had.
    """

    def __init__(self, oplog_id: str, step: int, in_flight: str, asked: str) -> None:
        super().__init__(oplog_id, step, in_flight, asked)
        self.in_flight = in_flight
        self.asked = asked

    def __str__(self) -> str:
        return (
            f"oplog {self.oplog_id} step {self.step}: {self.asked} started while {self.in_flight} "
            "of the same run was still in flight (asyncio.gather or a task inside one resumable "
            "function); steps of one run must be awaited one after the other, or each send "
            "made its own @resumable function"
        )


class UnknownFunctionError(JournalError):
    """An open oplog names a function/version that no ``@resumable`` registered."""

    def __init__(self, oplog_id: str, function: str, version: int, registered: list[int]) -> None:
        super().__init__(oplog_id, function, version, registered)
        self.oplog_id = oplog_id
        self.function = function
        self.version = version
        self.registered = registered

    def __str__(self) -> str:
        known = ", ".join(map(str, self.registered)) or "none"
        return (
            f"oplog {self.oplog_id} was written by {self.function} version {self.version}, "
            f"which is not registered (registered versions: {known}); keep that version "
            "decorated with @resumable(journal, version=...) until its oplogs are done"
        )


class UnknownOplogError(JournalError):
    """The journal has no oplog with this id (``get``, ``resume``, ``abandon``).

    After a :class:`JournalUnavailable` whose ``created`` is None, this is the answer that
    the oplog's first write was not committed: calling the function again is then safe.
    """

    def __init__(self, oplog_id: str) -> None:
        super().__init__(oplog_id)
        self.oplog_id = oplog_id

    def __str__(self) -> str:
        return f"no oplog {self.oplog_id}"


class OplogBusyError(JournalError):
    """Another live process holds the lease of this oplog."""

    def __init__(self, oplog_id: str, owner: str | None) -> None:
        super().__init__(oplog_id, owner)
        self.oplog_id = oplog_id
        self.owner = owner

    def __str__(self) -> str:
        return f"oplog {self.oplog_id} is being run by {self.owner}"


class OplogTakenOverError(OplogBusyError):
    """Our run lost its oplog's lease: another process took the oplog over.

    That happens only when our lease lapsed by the database's clock (this process
    looked dead: stalled longer than the lease), or was taken with ``force``. The function goes on, or already ended,
    in the other process; ``state`` is the oplog's state when we noticed (``open``,
    ``done``, ``failed``). Its result: ``journal.resume(oplog_id)`` returns (or raises)
    the recorded result once the oplog is finished, and raises
    :class:`OplogBusyError` while the other process still runs it.
    """

    def __init__(self, oplog_id: str, owner: str | None, state: str) -> None:
        super().__init__(oplog_id, owner)
        self.args = (oplog_id, owner, state)
        self.state = state

    def __str__(self) -> str:
        where = (f"it completed there ({self.state})" if self.state != "open"
                 else f"it continues there (lease owner {self.owner})")
        return (f"oplog {self.oplog_id} was taken over by another process while this run held it; "
                f"{where}: journal.resume({self.oplog_id!r}) returns its recorded result "
                "once it is finished")


class OplogAbandonedError(JournalError):
    """The oplog was abandoned (dead-lettered): it is never resumed again.

    ``reason`` says why: non-determinism found by ``resume_all()``, too many resumes that
    made no progress, or an operator's ``Journal.abandon``. This is also the oplog's
    recorded result, so ``Journal.resume`` of an abandoned oplog raises it.
    """

    def __init__(self, oplog_id: str, reason: str) -> None:
        super().__init__(oplog_id, reason)
        self.oplog_id = oplog_id
        self.reason = reason

    def __str__(self) -> str:
        return f"oplog {self.oplog_id} was abandoned: {self.reason}"


class JournalUnavailable(JournalError):
    """The journal's database could not be written while a run needed it to.

    ``unrecorded`` names what was not recorded (``"step 3 (send POST http://…)"``,
    ``"attempt 4 of step 2"``, ``"the result"``) and ``step`` its number (None for the
    result or the oplog itself); ``detail`` is the driver's first line, for a log.
    Nothing that depends on it left the process: the run stops here, records nothing
    more (even if the function swallows this), and once the database is back
    ``Journal.resume(oplog_id)`` or ``resume_all()`` runs the function on from its record
    — except when even the oplog's first write failed (``created`` False): then there
    is nothing to resume, and nothing was sent. ``created`` is None when that first
    write failed *at its COMMIT*: the server may have committed it and lost only the
    answer, so calling the function again could run it twice (a second oplog beside
    the first, which ``resume_all()`` finishes). Once the database is back,
    ``Journal.resume(oplog_id)`` settles it: it finishes the oplog if it exists, and
    raises :class:`UnknownOplogError` if it does not — only then call the function again.
    """

    def __init__(self, oplog_id: str, step: int | None, unrecorded: str, detail: str,
                 created: bool | None = True) -> None:
        super().__init__(oplog_id, step, unrecorded, detail, created)
        self.oplog_id = oplog_id
        self.step = step
        self.unrecorded = unrecorded
        self.detail = detail
        self.created = created

    def __str__(self) -> str:
        if not self.oplog_id:  # the journal's own work, no oplog's (resume_all's start)
            return (f"the journal database is unavailable: {self.unrecorded} failed "
                    f"({self.detail}); call it again once the database is back")
        if self.created is None:
            then = (f"the oplog's first write failed at its COMMIT, which the server may have "
                    f"made: once the database is back, journal.resume({self.oplog_id!r}) finishes "
                    "it if it exists (UnknownOplogError: it does not, call the function again)")
        elif self.created:
            then = (f"journal.resume({self.oplog_id!r}) runs the function on from its record "
                    "once the database is back")
        else:
            then = "the oplog was never created and nothing was sent: call the function again"
        return (f"oplog {self.oplog_id}: the journal database is unavailable, {self.unrecorded} "
                f"was not recorded ({self.detail}); {then}")


class SendError(ChttpClientError):
    """A certified send ended without a usable answer."""

    def __init__(self, message_id: str, method: str, url: str, detail: str) -> None:
        super().__init__(message_id, method, url, detail)
        self.message_id = message_id
        self.method = method
        self.url = url
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.method} {self.url} (message {self.message_id}): {self.detail}"


class DeadlineExceeded(SendError):
    """The send was retried until its deadline passed without a definitive answer.

    The receiver may or may not have processed it; the sender stops here so that a late
    retry never meets a receiver that has forgotten the id (docs/protocol.rst §4).
    ``attempts``: how many attempts were made, by every process that ran the send (the
    journal counts them), when known. A ``Retry-After`` that points past the deadline
    ends the send at once with this error instead of sleeping until the deadline.
    """

    def __init__(self, message_id: str, method: str, url: str, detail: str,
                 attempts: int | None = None) -> None:
        super().__init__(message_id, method, url, detail)
        self.args = (message_id, method, url, detail, attempts)
        self.attempts = attempts


class RunDeadlineExceeded(DeadlineExceeded):
    """Only this *run's* bound on waiting for an answer passed; the send's own did not.

    Nothing was recorded: the step stays ``recorded`` and the next run (a retried
    incoming message, a retried Celery task) resends the same message id. Raised for
    receiver handlers (``handler_send_deadline``) and Celery tasks
    (:mod:`chttp_client.celery`), never for a plain ``@resumable`` run.
    """


class UnhealableSendError(SendError):
    """The send failed in a way no retry can heal; it ended at once, not at its deadline.

    ``reason`` names the trouble: ``invalid-url`` (httpx could not parse it; nothing was
    recorded), ``unsupported-scheme`` (not ``http://``/``https://``), ``tls`` (the TLS
    handshake failed: ``https://`` spoken to a plain-HTTP port, say) or ``certificate``
    (the server's certificate did not verify). Fix the URL or the TLS setup and run again.
    Like :class:`DeadlineExceeded`, the error is the send's recorded outcome; an earlier
    attempt may have reached the receiver (a certificate changed between attempts).
    """

    def __init__(self, message_id: str, method: str, url: str, detail: str, reason: str,
                 attempts: int | None = None) -> None:
        super().__init__(message_id, method, url, detail)
        self.args = (message_id, method, url, detail, reason, attempts)
        self.reason = reason
        self.attempts = attempts

    def __str__(self) -> str:
        if not self.message_id:  # refused before an id was given (invalid URL, scheme)
            return f"{self.method} {self.url}: {self.detail}"
        return super().__str__()


class ProtocolAnswerError(SendError):
    """The receiver answered with a protocol error that retrying cannot change."""

    status: int = 0

    def __init__(
        self, message_id: str, method: str, url: str, detail: str, problem_type: str = ""
    ) -> None:
        super().__init__(message_id, method, url, detail)
        self.args = (message_id, method, url, detail, problem_type)
        self.problem_type = problem_type
        #: The receiver's answer (an :class:`httpx.Response`), when there was one.
        self.response: Any = None


class MessageRejectedError(ProtocolAnswerError):
    """400: the receiver refused the id itself (malformed, or required and missing)."""

    status = 400


class MessageGoneError(ProtocolAnswerError):
    """410: the message *was* processed, its response is no longer available (§3).

    Never a reason to resend under a new id.
    """

    status = 410


class MessageTooOldError(ProtocolAnswerError):
    """412: the receiver cannot judge a retry this old safely."""

    status = 412


class MessageIdReusedError(ProtocolAnswerError):
    """422: the id was already used for a different request."""

    status = 422


class ResponseTooLargeError(ProtocolAnswerError):
    """500 ``response-too-large``: the receiver rolled back and will do so again."""

    status = 500


_BY_PROBLEM: dict[tuple[int, str], type[ProtocolAnswerError]] = {
    (400, Problem.INVALID_MESSAGE_ID): MessageRejectedError,
    (400, Problem.MESSAGE_ID_REQUIRED): MessageRejectedError,
    (400, Problem.INVALID_FIRST_SENT): MessageRejectedError,
    (410, Problem.MESSAGE_ACKNOWLEDGED): MessageGoneError,
    (410, Problem.MESSAGE_EXPIRED): MessageGoneError,
    (410, Problem.MESSAGE_OUTCOME_UNKNOWN): MessageGoneError,
    (412, Problem.MESSAGE_TOO_OLD): MessageTooOldError,
    (422, Problem.MESSAGE_ID_REUSED): MessageIdReusedError,
    (500, Problem.RESPONSE_TOO_LARGE): ResponseTooLargeError,
}


def protocol_error_for(status: int, problem_type: str | None) -> type[ProtocolAnswerError] | None:
    """The exception class for a protocol answer, ``None`` for an application's answer.

    Only problem+json answers with one of docs/protocol.rst §4's types count: an application's
    own 400 or 422 is a normal response the function may inspect.
    """
    if problem_type is None:
        return None
    return _BY_PROBLEM.get((status, problem_type.rsplit("/", 1)[-1]))
