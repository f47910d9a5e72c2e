"""``chttp_context``: the object a resumable function records and replays its steps with.

Every non-deterministic value (:meth:`ResumableContext.persist`) and every certified
send (:meth:`ResumableContext.post` …) is one numbered *step*. On a first run a step
executes and is recorded; on a replay (after a crash) the step at the same number is
returned from its record instead. A step that asks for something else than its record
raises :class:`~chttp_client.errors.NonDeterminismError` naming both, and poisons the
context, so that even a function that swallows the error cannot record a result.

Durability arrangement (n + 1 commits for n certified sends)
------------------------------------------------------------
* ``persist()`` records are *buffered in memory*. Nothing outside the process can depend
  on them until a send carries them out, so losing them in a crash is harmless: the
  re-run draws fresh values that nothing has seen.
* A send's **intent commit** writes, in one transaction, the oplog row (if this is its
  first write), every buffered record (persist records, and the answer of the previous
  send, see below), the send step in state ``recorded`` (message id, full request,
  first-sent time) and any acknowledgements finished since the previous commit. Only
  then does the first attempt leave the process.
* Its **answer** (the definitive response, or the recorded deadline error, and the step
  marked ``done``) is *buffered* like a persist record and written by the oplog's next
  commit: the next send's intent commit, or the function's finish commit.
* The function's end commits its result with every record buffered since the last send.
  So a function with *n* sends costs ``n + 1`` commits (2 for the common single-send
  function), however many ``persist()`` calls it makes.

Why buffering the answer is safe: nothing that depends on the answer leaves the process
before that next commit — the next send leaves only after its intent commit (which
carries the answer), and the function's result is returned only after the finish commit.
If the process dies in between, the step is still ``recorded`` in the journal, so the
resume resends the *same* message id and the receiver replays its stored response
without running its handler again (PROTOCOL.md §2); the function continues exactly as
if it had read the answer from the journal.

That argument holds only while the receiver still has the stored response, so the
acknowledgement (``DELETE`` on ``X-Message-URL``, which lets the receiver drop it, and
makes a resend meet 410) is queued **only after the commit that made the answer
durable**. It runs on the journal's background thread and is marked in a later commit; a
lost mark only means the DELETE is repeated by a later ``resume_all()`` (it is
idempotent, PROTOCOL.md §3).

A function about to cause a side effect outside the journal that must not happen twice
or be forgotten (a token written to a file, a row in another database) calls
:meth:`ResumableContext.checkpoint` first: it commits the buffered records now.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence
from urllib.parse import urljoin

import httpx

from chttp_client import codec
from chttp_client.errors import (
    DeadlineExceeded,
    NonDeterminismError,
    ProtocolAnswerError,
    protocol_error_for,
)
from chttp_core.schema import KIND_PERSIST, KIND_SEND, STEP_DONE, STEP_RECORDED
from chttp_client.sending import deliver, problem_type_of
from chttp_core.wire import (
    HEADER_FIRST_SENT,
    HEADER_MESSAGE_ID,
    HEADER_MESSAGE_URL,
    fingerprint,
    format_http_date,
)

if TYPE_CHECKING:  # pragma: no cover
    from chttp_client.journal import Journal

__all__ = ["ResumableContext", "StepRecord", "StepEvent"]

#: Response headers not kept: the body is stored decoded, so these would lie about it.
_DROPPED_RESPONSE_HEADERS = frozenset({"content-encoding", "transfer-encoding", "content-length"})
#: Request headers httpx adds by itself; the recorded request keeps only the caller's.
_AUTOMATIC_REQUEST_HEADERS = frozenset(
    {"host", "content-length", "accept", "accept-encoding", "connection", "user-agent"}
)


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
        if self.kind == KIND_SEND:
            preview = ""
            if self.request is not None and "body" in self.request:
                body = codec.decode(self.request["body"])
                preview = f" {body[:80]!r}{'…' if len(body) > 80 else ''}"
            return f"send {self.name} (body sha256 {(self.fingerprint or '')[:12]}…{preview})"
        return f"persist {self.name}"


@dataclass(frozen=True)
class StepEvent:
    """What :attr:`Journal.fault_hook <chttp_client.journal.Journal.fault_hook>` is told.

    ``point`` is one of ``before-step``, ``send-recorded`` (intent commit done, nothing
    sent yet), ``send-attempt`` (one attempt about to leave), ``send-answered`` (the
    definitive answer is in memory, not yet buffered) and ``after-step`` (for a send: its
    answer is buffered, recorded by the oplog's next commit — which the *next* send's
    ``send-recorded`` follows). Only steps that really execute report events; replayed
    steps do not.
    """

    point: str
    oplog_id: str
    step: int
    kind: str
    name: str
    message_id: str | None = None
    body: bytes | None = None


@dataclass
class _Writes:
    """What waits for the next commit of this oplog (the module docstring says why)."""

    #: New persist steps, inserted by the next commit.
    steps: list[StepRecord] = field(default_factory=list)
    #: Answered send steps (already stored as ``recorded``), updated to ``done`` by it.
    answers: list[StepRecord] = field(default_factory=list)
    #: ``(step number, X-Message-URL)`` to acknowledge once those answers are durable.
    acks: list[tuple[int, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.steps or self.answers)


def _callable_name(target: Callable[..., Any]) -> str:
    module = getattr(target, "__module__", None) or type(target).__module__
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{qualname}"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ResumableContext:
    """The ``chttp_context`` argument of a resumable function (see the module docstring).

    Not shared between threads: one call of a function owns one context.
    """

    def __init__(
        self,
        journal: Journal,
        *,
        oplog_id: str,
        function: str,
        version: int,
        arguments: str,
        recorded: Sequence[StepRecord] = (),
        stored: bool = False,
        owner: str | None = None,
        message_id_for: Callable[[int], str] | None = None,
        script: Sequence[StepRecord] | None = None,
        run_deadline: timedelta | None = None,
    ) -> None:
        self.journal = journal
        self.oplog_id = oplog_id
        self.function = function
        self.version = version
        self._arguments = arguments
        self._recorded = list(recorded)
        #: True once the oplog row exists in the database.
        self._stored = stored
        self._owner = owner
        self._message_id_for = message_id_for or (lambda _number: str(uuid.uuid4()))
        # The testing helper's reference run: new steps must match it and reuse its
        # values and ids (chttp_client.testing).
        self._script = list(script) if script is not None else None
        self._writes = _Writes()
        self._number = 0
        self._poisoned: NonDeterminismError | None = None
        self._body: bytes | None = None
        #: How long one *run* waits for a send's answer (receiver handlers, which hold a
        #: transaction open meanwhile): past it the send raises DeadlineExceeded without
        #: recording it, so the next run resends the same id. None: only the send's own
        #: deadline, measured from its first attempt and recorded as final.
        self._run_deadline = run_deadline
        #: When this run last renewed its lease (Journal._renew_lease).
        self._lease_renewed_at: datetime | None = None

    # -- public API --------------------------------------------------------------------

    @property
    def step(self) -> int:
        """How many steps this run has taken so far."""
        return self._number

    @property
    def replaying(self) -> bool:
        """True while the next step will come from the record."""
        return self._number < len(self._recorded)

    def persist(self, value_or_callable: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Record a non-deterministic value once; return the recorded value on replay.

        ``persist(value)`` records ``value``; ``persist(callable, *args, **kwargs)`` calls
        it on the first run only (an exception it raises is recorded and re-raised on
        replay). The value comes back as the codec decodes it, even on the first run.

        ``persist`` is for *values*: the record is buffered and committed with the next
        send (or the function's end), because nothing outside the process can have seen
        the value before then. A side effect that needs the value durable *before* it
        happens (writing a persisted token to a file, another database, a message on a
        non-certified channel) calls :meth:`checkpoint` first; otherwise a crash right
        after the side effect loses the record and the resumed run draws a new value
        that disagrees with what the outside world already holds.
        """
        is_call = callable(value_or_callable)
        name = _callable_name(value_or_callable) if is_call else "value"
        number, record = self._next_step(KIND_PERSIST, name, None)
        if record is not None:
            return self._replay_outcome(record)
        self._event("before-step", number, KIND_PERSIST, name)
        scripted = self._scripted(number, KIND_PERSIST, name, None)
        if scripted is not None:
            outcome = scripted.outcome or {"value": None}
        else:
            try:
                value = value_or_callable(*args, **kwargs) if is_call else value_or_callable
            except Exception as error:
                outcome = {"error": codec.exception_record(error)}
            else:
                outcome = {"value": codec.encode(value)}  # TypeError: refuse unrecordable values
        self._writes.steps.append(
            StepRecord(number, KIND_PERSIST, name, STEP_DONE, outcome=outcome)
        )
        self._event("after-step", number, KIND_PERSIST, name)
        return self._replay_outcome(self._writes.steps[-1])

    def checkpoint(self) -> None:
        """Commit every buffered record now (one commit; nothing to write: no commit).

        For a function about to cause a side effect outside the journal that depends on
        persisted values or on a send's answer (see :meth:`persist`). On a replay it
        writes only what this run added since the recorded steps, which may be nothing.
        """
        if self._poisoned is not None:
            raise self._poisoned
        if self._writes:
            self._commit(None)

    def now(self) -> datetime:
        """The current UTC time, persisted (``persist(utcnow)``)."""
        return self.persist(_utcnow)

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.send("GET", url, **options)

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.send("POST", url, **options)

    def put(self, url: str, **options: Any) -> httpx.Response:
        return self.send("PUT", url, **options)

    def patch(self, url: str, **options: Any) -> httpx.Response:
        return self.send("PATCH", url, **options)

    def delete(self, url: str, **options: Any) -> httpx.Response:
        return self.send("DELETE", url, **options)

    def send(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        # Seconds after the first attempt to give up; None: the journal's RetryPolicy.deadline.
        deadline: float | None = None,
    ) -> httpx.Response:
        """A certified send: recorded, retried with one id until answered, replayed after.

        Returns the definitive response as an :class:`httpx.Response` rebuilt from its
        record (status, headers, body), identical on a first run and on a replay.
        Raises :class:`~chttp_client.errors.ProtocolAnswerError` subclasses for §4
        protocol answers and :class:`~chttp_client.errors.DeadlineExceeded`: recorded
        (final, replayed) when ``deadline`` passed; not recorded when only this run's
        bound passed (receiver handlers: ``CertifiedMiddleware(handler_send_deadline=…)``),
        so that the next run resends the same message.
        """
        method = method.upper()
        client = self.journal.http_client
        built = client.build_request(method, url, json=json, content=content, headers=headers)
        body = built.read()
        full_url = str(built.url)
        name = f"{method} {full_url}"
        digest = fingerprint(method, built.url.path, built.url.query.decode("ascii"), body)
        number, record = self._next_step(KIND_SEND, name, digest, body)
        self._body = body
        if record is not None and record.state == STEP_DONE:
            return self._replay_send(record)
        if record is None:
            self._event("before-step", number, KIND_SEND, name)
            scripted = self._scripted(number, KIND_SEND, name, digest)
            request_headers = [
                (key, value) for key, value in built.headers.multi_items()
                if key.lower() not in _AUTOMATIC_REQUEST_HEADERS
            ]
            record = StepRecord(
                number, KIND_SEND, name, STEP_RECORDED,
                message_id=scripted.message_id if scripted is not None else self._message_id_for(number),
                fingerprint=digest,
                request={"method": method, "url": full_url, "headers": request_headers,
                         "body": codec.encode(body)},
                first_sent_at=self.journal.clock(),
            )
            self._commit(record)
            self._event("send-recorded", number, KIND_SEND, name, record.message_id, body)
        return self._deliver(record, deadline)

    # -- steps -------------------------------------------------------------------------

    def _next_step(self, kind: str, name: str, digest: str | None,
                   body: bytes | None = None) -> tuple[int, StepRecord | None]:
        if self._poisoned is not None:
            raise self._poisoned
        self._number += 1
        number = self._number
        if number > len(self._recorded):
            return number, None
        record = self._recorded[number - 1]
        if record.kind != kind or record.name != name or record.fingerprint != digest:
            got = StepRecord(number, kind, name, STEP_DONE, fingerprint=digest,
                             request=_body_only(body)).describe()
            self._poisoned = NonDeterminismError(self.oplog_id, number, record.describe(), got)
            raise self._poisoned
        return number, record

    def _scripted(self, number: int, kind: str, name: str, digest: str | None) -> StepRecord | None:
        """The reference run's step ``number`` (testing helper only); it must match."""
        if self._script is None:
            return None
        self.check_script(number, kind, name, digest)
        return self._script[number - 1]

    def check_script(self, number: int, kind: str, name: str, digest: str | None) -> None:
        """Raise :class:`NonDeterminismError` if step ``number`` differs from the reference."""
        if self._script is None:
            return
        got = StepRecord(number, kind, name, STEP_DONE, fingerprint=digest,
                         request=_body_only(self._body if kind == KIND_SEND else None))
        if number > len(self._script):
            expected = "no step (the reference run ended here)"
        else:
            reference = self._script[number - 1]
            if (reference.kind, reference.name, reference.fingerprint) == (kind, name, digest):
                return
            expected = reference.describe()
        self._poisoned = NonDeterminismError(self.oplog_id, number, f"{expected} in the reference run",
                                             got.describe())
        raise self._poisoned

    def _replay_outcome(self, record: StepRecord) -> Any:
        outcome = record.outcome or {}
        if "error" in outcome:
            raise codec.rebuild_exception(outcome["error"])
        return codec.decode(outcome.get("value"))

    def _event(self, point: str, number: int, kind: str, name: str,
               message_id: str | None = None, body: bytes | None = None) -> None:
        hook = self.journal.fault_hook
        if hook is not None:
            hook(StepEvent(point, self.oplog_id, number, kind, name, message_id, body))

    # -- sends -------------------------------------------------------------------------

    def _deliver(self, record: StepRecord, deadline: float | None) -> httpx.Response:
        journal = self.journal
        request = record.request or {}
        body = codec.decode(request.get("body"))
        assert record.message_id is not None and record.first_sent_at is not None
        first_sent = record.first_sent_at
        if first_sent.tzinfo is None:
            first_sent = first_sent.replace(tzinfo=timezone.utc)
        headers = list(request.get("headers", [])) + [
            (HEADER_MESSAGE_ID, record.message_id),
            (HEADER_FIRST_SENT, format_http_date(first_sent)),
        ]
        policy = journal.retry
        limit = policy.deadline if deadline is None else timedelta(seconds=deadline)

        def build() -> httpx.Request:
            return journal.http_client.build_request(
                request["method"], request["url"], content=body, headers=headers,
                timeout=policy.timeout,
            )

        def on_attempt(_request: httpx.Request) -> None:
            self._event("send-attempt", record.number, KIND_SEND, record.name,
                        record.message_id, body)

        deadline_at = first_sent + limit
        run_deadline_at = None if self._run_deadline is None else journal.clock() + self._run_deadline
        attempt = deliver(
            journal.http_client, build,
            deadline_at=deadline_at if run_deadline_at is None else min(deadline_at, run_deadline_at),
            policy=policy, clock=journal.clock, sleep=journal.sleep, on_attempt=on_attempt,
            on_wait=lambda: journal._renew_lease(self),
        )
        if attempt.response is None and run_deadline_at is not None and journal.clock() < deadline_at:
            # Only this run gave up: the step stays "recorded" and the next run (a retry
            # of the incoming message) resends it under the same id.
            raise DeadlineExceeded(
                record.message_id, request["method"], request["url"],
                f"no definitive answer within this run's {self._run_deadline} "
                f"({attempt.attempts} attempt(s); last: {attempt.last_error}); not recorded: "
                "the next run resends the same message",
            )
        if attempt.response is None:
            error = DeadlineExceeded(
                record.message_id, request["method"], request["url"],
                f"no definitive answer after {attempt.attempts} attempt(s) within {limit}; "
                f"last: {attempt.last_error}",
            )
            record.outcome = {"error": codec.exception_record(error)}
        else:
            self._event("send-answered", record.number, KIND_SEND, record.name,
                        record.message_id, body)
            response = attempt.response
            record.response = {
                "status": response.status_code,
                "headers": [(k, v) for k, v in response.headers.multi_items()
                            if k.lower() not in _DROPPED_RESPONSE_HEADERS],
                "body": codec.encode(response.content),
            }
            location = response.headers.get(HEADER_MESSAGE_URL)
            record.message_url = urljoin(request["url"], location) if location else None
        record.state = STEP_DONE
        # Buffered: the oplog's next commit records it, and only then may it be
        # acknowledged (the module docstring says why).
        self._writes.answers.append(record)
        if record.message_url is not None:
            self._writes.acks.append((record.number, record.message_url))
        self._event("after-step", record.number, KIND_SEND, record.name, record.message_id, body)
        return self._replay_send(record)

    def _replay_send(self, record: StepRecord) -> httpx.Response:
        """Rebuild the recorded answer; raise what it meant (the same on every replay)."""
        request = record.request or {}
        if record.response is None:
            raise codec.rebuild_exception((record.outcome or {})["error"])
        stored = record.response
        response = httpx.Response(
            stored["status"],
            headers=[tuple(pair) for pair in stored["headers"]],
            content=codec.decode(stored["body"]),
            request=httpx.Request(request.get("method", "GET"), request.get("url", "http://invalid/")),
        )
        error_class = protocol_error_for(response.status_code, problem_type_of(response))
        if error_class is not None:
            detail = ""
            try:
                detail = str(response.json().get("detail") or response.json().get("title") or "")
            except (ValueError, AttributeError):
                pass
            error: ProtocolAnswerError = error_class(
                record.message_id or "", request.get("method", ""), request.get("url", ""),
                f"{response.status_code} {problem_type_of(response)}: {detail}".rstrip(": "),
                problem_type_of(response) or "",
            )
            error.response = response
            raise error
        return response

    # -- durability ----------------------------------------------------------------------

    def _commit(self, record: StepRecord | None) -> None:
        """One transaction: oplog row if new, buffered records, new step ``record``, ack marks."""
        writes = self._writes
        self.journal._commit_steps(self, writes.steps + ([record] if record is not None else []),
                                   writes.answers)
        self._committed(writes)

    def _flush_result(self, state: str, result: dict[str, Any]) -> None:
        writes = self._writes
        self.journal._finish(self, writes.steps, writes.answers, state, result)
        self._committed(writes)

    def _committed(self, writes: _Writes) -> None:
        """After a commit: the buffer is durable, so its answers may be acknowledged."""
        self._writes = _Writes()
        self._stored = True
        for number, url in writes.acks:
            self.journal._queue_ack(self.oplog_id, number, url)

    def _flush_pending(self) -> None:
        """Write buffered records now (the receiver side, at the end of the request)."""
        if self._writes:
            self._commit(None)


def _body_only(body: bytes | None) -> dict[str, Any] | None:
    return None if body is None else {"body": codec.encode(body)}


def message_digest(*parts: str) -> str:
    """A short, stable digest used for derived ids."""
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()
