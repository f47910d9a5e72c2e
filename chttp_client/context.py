"""``chttp_context``: the object a resumable function records and replays its steps with.

Every non-deterministic value (:meth:`ResumableContext.persist`) and every certified
send (:meth:`ResumableContext.post` …) is one numbered *step*. On a first run a step
executes and is recorded; on a replay (after a crash) the step at the same number is
returned from its record instead. A step that asks for something else than its record
(another kind, name, body, or request headers for a send) raises
:class:`~chttp_client.errors.NonDeterminismError` naming both, and poisons the context,
so that even a function that swallows the error cannot record a result. A recorded step
this version cannot read (corrupted, or written by a newer version) does the same with
:class:`~chttp_client.codec.CodecError` naming the oplog and the step.

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
without running its handler again (docs/protocol.rst §2); the function continues exactly as
if it had read the answer from the journal.

That argument holds only while the receiver still has the stored response, so the
acknowledgement (``DELETE`` on ``X-Message-URL``, which lets the receiver drop it, and
makes a resend meet 410) is queued **only after the commit that made the answer
durable**. It runs in the background (:mod:`chttp_client.acknowledger`) and is marked in a later
commit; a lost mark only means the DELETE is repeated by a later ``resume_all()`` (it is
idempotent, docs/protocol.rst §3). :meth:`ResumableContext.checkpoint` commits the
buffered records before a side effect outside the journal (see :meth:`~ResumableContext.persist`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Sequence, cast

import httpx

from chttp_client import codec, observers, telemetry
from chttp_client.codec import CodecError
from chttp_client.errors import JournalUnavailable, NonDeterminismError
from chttp_client.leases import new_owner
from chttp_client.observers import StepEvent
from chttp_client.shorthands import SendShorthands
from chttp_client.oplog_store import Commit, Finish, NewOplog
from chttp_client.recorded_sends import answer_recorded_send, rebuild_response, request_record
from chttp_client.records import StepRecord
from chttp_client.run_writes import RunWrites
from chttp_client.services import RunServices
from chttp_core.schema import KIND_PERSIST, KIND_SEND, OPLOG_DONE, OPLOG_FAILED, STEP_DONE, STEP_RECORDED
from chttp_core.wire import fingerprint

__all__ = ["ResumableContext", "RunServices"]  # RunServices: re-exported for its users


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


class ResumableContext(SendShorthands, RunWrites):
    """The ``chttp_context`` argument of a resumable function (see the module docstring).

    Not shared between threads: one call of a function owns one context. Made by
    :class:`~chttp_client.journal.Journal` (``run``/``resume``) and by
    :func:`~chttp_client.incoming.open_incoming_context`, never by a function itself.
    """

    def __init__(
        self,
        services: RunServices,
        *,
        oplog_id: str,
        function: str,
        version: int,
        arguments: str,
        recorded: Sequence[StepRecord] = (),
        # True once the oplog row exists in the database.
        stored: bool = False,
        # The lease owner this run writes as (None: a new one).
        owner: str | None = None,
        # The message id of a new send step (None: a random UUID).
        message_id_for: Callable[[int], str] | None = None,
        # How long one *run* waits for a send's answer (receiver handlers, which hold a
        # transaction open meanwhile): past it the send raises DeadlineExceeded without
        # recording it, so the next run resends the same id. None: only the send's own
        # deadline, measured from its first attempt and recorded as final.
        run_deadline: timedelta | None = None,
    ) -> None:
        self.oplog_id = oplog_id
        self.function = function
        self.version = version
        self._services = services
        self._arguments = arguments
        self._recorded = list(recorded)
        self._stored = stored
        self._owner = owner or new_owner()
        self._message_id_for = message_id_for or (lambda _number: str(uuid.uuid4()))
        self._writes = _Writes()
        self._number = 0
        #: A step diverged or was unreadable, or the journal is gone: nothing more is recorded.
        self._poisoned: NonDeterminismError | CodecError | JournalUnavailable | None = None
        self._run_deadline = run_deadline
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
            return self._replay(record)
        self._event("before-step", number, KIND_PERSIST, name)
        scripted = self._scripted(StepRecord(number, KIND_PERSIST, name, STEP_DONE))
        if scripted is not None:
            outcome = scripted.outcome or {"value": None}
        else:
            try:
                value = value_or_callable(*args, **kwargs) if is_call else value_or_callable
            except Exception as error:
                outcome = {"error": codec.exception_record(error)}
            else:
                outcome = {"value": codec.encode(value)}  # TypeError: refuse unrecordable values
        self._writes.steps.append(StepRecord(number, KIND_PERSIST, name, STEP_DONE, outcome=outcome))
        self._event("after-step", number, KIND_PERSIST, name)
        return self._replay(self._writes.steps[-1])

    def checkpoint(self) -> None:
        """Commit every buffered record now (one commit; nothing to write: no commit).

        For a function about to cause a side effect outside the journal that depends on
        persisted values or on a send's answer (see :meth:`persist`). On a replay it
        writes only what this run added since the recorded steps, which may be nothing.
        """
        if self._poisoned is not None:
            raise self._poisoned
        self.flush()

    def now(self) -> datetime:
        """The current UTC time, persisted (``persist(utcnow)``)."""
        moment: datetime = self.persist(_utcnow)
        return moment

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
        built = self._services.http_client.build_request(
            method, url, json=json, content=content, headers=headers)
        body = built.read()
        full_url = str(built.url)
        name = f"{method} {full_url}"
        digest = fingerprint(method, built.url.path, built.url.query.decode("ascii"), body)
        request = request_record(method, full_url, built, body)
        number, record = self._next_step(KIND_SEND, name, digest, request)
        if record is not None and record.state == STEP_DONE:
            return cast(httpx.Response, self._replay(record))
        if record is None:
            self._event("before-step", number, KIND_SEND, name)
            scripted = self._scripted(StepRecord(number, KIND_SEND, name, STEP_DONE,
                                                 fingerprint=digest, request=request))
            record = StepRecord(
                number, KIND_SEND, name, STEP_RECORDED,
                message_id=scripted.message_id if scripted is not None else self._message_id_for(number),
                fingerprint=digest, request=request, first_sent_at=self._services.clock(),
                attempts=1,  # counted by the intent commit: the first attempt follows it
            )
            self._commit([record])
            self._event("send-recorded", number, KIND_SEND, name, record.message_id, body)
        return self._deliver(record, deadline)

    def call(self, function: Callable[..., Any]) -> Any:
        """Run ``function`` with the recorded arguments and record how it ended.

        A :class:`NonDeterminismError` or an unreadable record's :class:`CodecError`
        (even one the function swallowed) records nothing: the oplog stays as it was,
        and :meth:`Journal.resume_all` abandons it with the error as its reason.
        """
        arguments = codec.loads(self._arguments, where=f"oplog {self.oplog_id} arguments")
        try:
            value = function(*arguments["args"], chttp_context=self, **arguments["kwargs"])
        except NonDeterminismError:
            raise
        except Exception as error:
            if error is self._poisoned:
                raise
            if self._poisoned is not None:
                raise self._poisoned from error
            self._finish(OPLOG_FAILED, {"error": codec.exception_record(error)})
            raise
        if self._poisoned is not None:
            raise self._poisoned
        try:
            encoded = codec.encode(value)
        except TypeError as error:
            self._finish(OPLOG_FAILED, {"error": codec.exception_record(error)})
            raise
        self._finish(OPLOG_DONE, {"value": encoded})
        return codec.decode(encoded)

    def flush(self) -> None:
        """Write buffered records now, if there are any (a handler's request is over)."""
        if self._writes:
            self._commit([])

    # -- steps -------------------------------------------------------------------------

    def _next_step(self, kind: str, name: str, digest: str | None,
                   request: dict[str, Any] | None = None) -> tuple[int, StepRecord | None]:
        if self._poisoned is not None:
            raise self._poisoned
        self._number += 1
        number = self._number
        if number > len(self._recorded):
            return number, None
        record = self._recorded[number - 1]
        got = StepRecord(number, kind, name, STEP_DONE, fingerprint=digest, request=request)
        if not record.matches(got):
            telemetry.nondeterminism()
            self._poisoned = NonDeterminismError(self.oplog_id, number, record.describe_against(got),
                                                 got.describe_against(record))
            raise self._poisoned
        return number, record

    def _scripted(self, proposed: StepRecord) -> StepRecord | None:
        """A step an observer scripted (the crash-every-step check); it may refuse ours."""
        try:
            return observers.scripted_step(self._services.store, self.oplog_id, proposed)
        except NonDeterminismError as error:
            telemetry.nondeterminism()
            self._poisoned = error
            raise

    def _event(self, point: str, number: int, kind: str, name: str,
               message_id: str | None = None, body: bytes | None = None) -> None:
        observers.emit(self._services.store,
                       StepEvent(point, self.oplog_id, number, kind, name, message_id, body))

    # -- sends -------------------------------------------------------------------------

    def _deliver(self, record: StepRecord, deadline: float | None) -> httpx.Response:
        services = self._services
        try:
            body = codec.decode((record.request or {}).get("body"), where=self._where(record))
        except CodecError as error:
            raise self._unreadable(error, record) from None
        observed = telemetry.observe_send(record, oplog_id=self.oplog_id, function=self.function)

        def on_attempt() -> None:
            observed.attempt()
            self._event("send-attempt", record.number, KIND_SEND, record.name, record.message_id, body)

        def on_answer() -> None:
            self._event("send-answered", record.number, KIND_SEND, record.name, record.message_id, body)

        with observed, services.heartbeat.hold(self.oplog_id, self._owner,
                                               self._lease_renewed_at or services.clock()):
            answer_recorded_send(
                record, client=services.http_client, policy=services.retry, clock=services.clock,
                sleep=services.sleep, deadline=deadline, run_deadline=self._run_deadline,
                on_attempt=on_attempt, on_answer=on_answer, on_wait=self._renew_lease_if_due,
                count_attempt=lambda attempts: self._count_attempt(record, attempts),
                prepaid=record.number > len(self._recorded),
            )
            observed.settled(record)
        # Buffered: the oplog's next commit records it, and only then may it be
        # acknowledged (the module docstring says why).
        self._writes.answers.append(record)
        if record.message_url is not None:
            self._writes.acks.append((record.number, record.message_url))
        self._event("after-step", record.number, KIND_SEND, record.name, record.message_id, body)
        return cast(httpx.Response, self._replay(record))

    def _replay(self, record: StepRecord) -> Any:
        """A recorded step's value (a send's rebuilt answer), or the exception it recorded
        raised: the same on every replay."""
        outcome, where = record.outcome or {}, self._where(record)
        try:
            if record.kind == KIND_SEND and record.response is not None:
                return rebuild_response(record.message_id or "", record.request or {}, record.response)
            if record.kind != KIND_SEND and "error" not in outcome:
                return codec.decode(outcome.get("value"), where=where)
            error = codec.rebuild_exception(outcome.get("error"), where=where)
        except CodecError as unreadable:
            raise self._unreadable(unreadable, record) from None
        raise error

    def _where(self, record: StepRecord) -> str:
        return f"oplog {self.oplog_id} step {record.number}"

    def _unreadable(self, error: CodecError, record: StepRecord) -> CodecError:
        """Poison the run with an unreadable record, like a divergent step, naming it."""
        error.where = error.where or self._where(record)
        self._poisoned = error
        return error

    # -- durability ----------------------------------------------------------------------

    def _commit(self, new_steps: list[StepRecord], finish: Finish | None = None) -> None:
        """One transaction: oplog row if new, buffered records, ``new_steps``, ack marks."""
        services = self._services
        writes = self._writes
        now = services.clock()
        self._journal(services.store.commit, Commit(
            oplog_id=self.oplog_id, owner=self._owner, now=now, lease=services.lease,
            new=None if self._stored else NewOplog(self.function, self.version, self._arguments),
            inserts=writes.steps + new_steps, answers=writes.answers, finish=finish,
            acks=services.acknowledger.take_marks(),
            # This process acknowledges the answers it makes durable (and nobody else
            # meanwhile); without acknowledgements, resume_all() will.
            ack_claim=services.lease if services.acknowledger.enabled else None,
        ))
        # The buffer is durable: its answers may be acknowledged now.
        self._writes = _Writes()
        telemetry.oplog_committed(new=not self._stored, finish=finish)
        self._stored = True
        self._lease_renewed_at = now
        for number, url in writes.acks:
            services.acknowledger.queue(self.oplog_id, number, url)

    def _finish(self, state: str, result: dict[str, Any]) -> None:
        """The run's last commit: buffered steps and the oplog's result, lease released."""
        self._commit([], Finish(state, result))

    def _renew_lease_if_due(self) -> None:
        """Between retry attempts: renew the lease once half of it has passed.

        *When* is timed with the journal's clock (only its rate matters); the new
        deadline is the database's now plus the lease (:mod:`chttp_client.leases`).
        """
        if not self._stored:
            return
        services = self._services
        now = services.clock()
        last = self._lease_renewed_at
        if last is not None and now - last < services.lease / 2:
            return
        self._journal(services.store.renew_lease, self.oplog_id, self._owner, now=now, lease=services.lease)
        self._lease_renewed_at = now
