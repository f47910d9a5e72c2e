"""The step logic of one run of a resumable function, written once for ``def`` and ``async def``.

Each ``persist()`` and certified send is one numbered *step*, recorded on a first run
and replayed after a crash; :mod:`chttp_client.context` tells the rules and the
durability arrangement (*n* + 1 commits for *n* sends).

One logic, two faces
--------------------
:class:`RunSteps` holds a run's state and its rules as generators that yield I/O
*effects* instead of performing them (:mod:`chttp_client.effects`). The faces a
function sees only drive them: :class:`~chttp_client.context.ResumableContext` for a
``def`` function (:class:`~chttp_client.effects.SyncExecutor`),
:class:`~chttp_client.async_context.AsyncResumableContext` for an ``async def`` one
(:class:`~chttp_client.effects.AsyncExecutor`: the journal's SQL in a worker thread,
sends through ``httpx.AsyncClient``). Numbering, replay, ids, leases, the write buffer
and every statement of the journal are therefore the same code for both; the run's
journal writes (commits, lease renewals, attempts counted before they leave, a journal
outage ending the run: :class:`~chttp_client.errors.JournalUnavailable`) are its mixin
:class:`~chttp_client.run_writes.RunWrites`.

Two steps of one run may not be in flight at once (``asyncio.gather`` of two
``post()`` calls): their numbers, and what each intent commit carries, would depend on
scheduling, so a resumed run could not match its record. The second step raises
:class:`~chttp_client.errors.ConcurrentStepsError` (a
:class:`~chttp_client.errors.NonDeterminismError`) and poisons the run like a divergent
step: nothing more is recorded, and ``resume_all()`` abandons the oplog with that reason.
A cancelled run (:class:`asyncio.CancelledError`) records nothing more and gives its
lease up: the oplog resumes at once, resending the recorded message id.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence, TypeVar

import httpx

from chttp_client import codec, observers, telemetry
from chttp_client.codec import CodecError
from chttp_client.effects import CallUser, Pause, Steps
from chttp_client.errors import ConcurrentStepsError, JournalUnavailable, NonDeterminismError, UnhealableSendError
from chttp_client.leases import new_owner
from chttp_client.observers import StepEvent
from chttp_client.recorded_sends import SendOptions, answer_recorded_send, rebuild_response, request_record
from chttp_client.records import PendingWrites, StepRecord
from chttp_client.registry import importable_module
from chttp_client.run_writes import RunWrites
from chttp_client.services import RunServices
from chttp_core.schema import KIND_PERSIST, KIND_SEND, OPLOG_DONE, OPLOG_FAILED, STEP_DONE, STEP_RECORDED
from chttp_core.wire import fingerprint

__all__ = ["RunSteps", "SendOptions"]  # SendOptions: re-exported for the faces

T = TypeVar("T")


def _callable_name(target: Callable[..., Any]) -> str:
    # A script's helper is named as its importer will name it (a resume in another process).
    module = getattr(target, "__module__", None) or type(target).__module__
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{importable_module(module) or module}.{qualname}"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ``now()`` is the step ``persist(chttp_client.context._utcnow)``: oplogs recorded before
# the step logic moved here name it so, and a replay must still match them.
_utcnow.__module__ = "chttp_client.context"


class RunSteps(RunWrites):
    """One run's state and step rules (see the module docstring); no I/O of its own.

    Made through a face (:class:`~chttp_client.context.ResumableContext`,
    :class:`~chttp_client.async_context.AsyncResumableContext`), never directly.
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
        # Builds each send's request (the face's HTTP client); None: services.http_client.
        client: httpx.Client | httpx.AsyncClient | None = None,
    ) -> None:
        self.oplog_id = oplog_id
        self.function = function
        self.version = version
        self._services = services
        self._client = client if client is not None else services.http_client
        self._arguments = arguments
        self._recorded = list(recorded)
        self._stored = stored
        self._owner = owner or new_owner()
        self._message_id_for = message_id_for or (lambda _number: str(uuid.uuid4()))
        self._writes = PendingWrites()
        self._number = 0
        #: A step diverged or was unreadable, or the journal is gone: nothing more is recorded.
        self._poisoned: NonDeterminismError | CodecError | JournalUnavailable | None = None
        self._run_deadline = run_deadline
        self._lease_renewed_at: datetime | None = None
        #: The step now waiting on I/O, if any (two at once are refused).
        self._in_flight: str | None = None

    @property
    def step(self) -> int:
        """How many steps this run has taken so far."""
        return self._number

    @property
    def replaying(self) -> bool:
        """True while the next step will come from the record."""
        return self._number < len(self._recorded)

    # -- the steps a function takes ----------------------------------------------------

    def persist_steps(self, value_or_callable: Any, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Steps[Any]:
        """``persist(value)`` / ``persist(callable, *args, **kwargs)`` (the faces document it)."""
        is_call = callable(value_or_callable)
        name = _callable_name(value_or_callable) if is_call else "value"
        return (yield from self._guarded(f"persist {name}",
                                         self._persist(value_or_callable, is_call, name, args, kwargs)))

    def _persist(self, value_or_callable: Any, is_call: bool, name: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Steps[Any]:
        number, record = self._next_step(KIND_PERSIST, name, None)
        if record is not None:
            return self._replay(record)
        self._event("before-step", number, KIND_PERSIST, name)
        scripted = self._scripted(StepRecord(number, KIND_PERSIST, name, STEP_DONE))
        if scripted is not None:
            outcome = scripted.outcome or {"value": None}
        else:
            try:
                value = (yield CallUser(value_or_callable, args, kwargs)) if is_call else value_or_callable
            except Exception as error:
                outcome = {"error": codec.exception_record(error)}
            else:
                outcome = {"value": codec.encode(value)}  # TypeError: refuse unrecordable values
        self._writes.steps.append(StepRecord(number, KIND_PERSIST, name, STEP_DONE, outcome=outcome))
        self._event("after-step", number, KIND_PERSIST, name)
        return self._replay(self._writes.steps[-1])

    def now_steps(self) -> Steps[datetime]:
        """``now()``: the current UTC time, persisted."""
        moment: datetime = yield from self.persist_steps(_utcnow, (), {})
        return moment

    def checkpoint_steps(self) -> Steps[None]:
        """Commit every buffered record now (nothing to write: no commit)."""
        if self._poisoned is not None:
            raise self._poisoned
        yield from self._guarded("checkpoint", self.flush_steps())

    def send_steps(self, method: str, url: str, options: SendOptions) -> Steps[httpx.Response]:
        """A certified send: recorded, retried with one id until answered, replayed after."""
        method = method.upper()
        try:
            built = self._client.build_request(method, url, json=options.json, content=options.content,
                                               headers=options.headers)
        except httpx.InvalidURL as error:  # nothing recorded: no retry could send it
            raise UnhealableSendError("", method, str(url), f"invalid URL: {error}", "invalid-url",
                                      0) from None
        if built.url.scheme not in ("http", "https"):  # "localhost:8000/x" parses so, too
            raise UnhealableSendError("", method, str(url), "the URL's scheme is not http:// or "
                                      "https://, so it is not sent", "unsupported-scheme", 0)
        body = built.read()
        name = f"{method} {built.url}"
        response: httpx.Response = yield from self._guarded(
            f"send {name}", self._send(method, name, built, body, options))
        return response

    def _send(self, method: str, name: str, built: httpx.Request, body: bytes,
              options: SendOptions) -> Steps[httpx.Response]:
        full_url = str(built.url)
        digest = fingerprint(method, built.url.path, built.url.query.decode("ascii"), body)
        request = request_record(method, full_url, built, body)
        number, record = self._next_step(KIND_SEND, name, digest, request)
        if record is not None and record.state == STEP_DONE:
            replayed: httpx.Response = self._replay(record)
            return replayed
        if record is not None:
            # A recorded send not yet answered is resent: first let a concurrent
            # step of this run (gather) be refused, so that nothing leaves meanwhile.
            yield Pause()
        else:
            self._event("before-step", number, KIND_SEND, name)
            scripted = self._scripted(StepRecord(number, KIND_SEND, name, STEP_DONE,
                                                 fingerprint=digest, request=request))
            record = StepRecord(
                number, KIND_SEND, name, STEP_RECORDED,
                message_id=scripted.message_id if scripted is not None else self._message_id_for(number),
                fingerprint=digest, request=request, first_sent_at=self._services.clock(),
                attempts=1,  # counted by the intent commit: the first attempt follows it
            )
            yield from self._commit([record])
            self._event("send-recorded", number, KIND_SEND, name, record.message_id, body)
        if self._poisoned is not None:  # a concurrent step was refused meanwhile
            raise self._poisoned
        return (yield from self._deliver(record, options.deadline))

    def call_steps(self, function: Callable[..., Any], context: Any) -> Steps[Any]:
        """Run ``function`` with the recorded arguments and ``chttp_context=context``;
        record how it ended (:meth:`_called`). The heartbeat keeps the run's lease alive
        all along, from the moment it has one (:meth:`RunWrites._keep_lease`)."""
        self._whole_run = True
        self._keep_lease()
        try:
            return (yield from self._called(function, context))
        finally:
            self._drop_lease()

    def _called(self, function: Callable[..., Any], context: Any) -> Steps[Any]:
        """:meth:`call_steps` without the heartbeat.

        A :class:`NonDeterminismError`, an unreadable record's :class:`CodecError` or a
        :class:`JournalUnavailable` (even one the function swallowed) records nothing:
        the oplog stays as it was (:meth:`ResumableContext.call
        <chttp_client.context.ResumableContext.call>` says what resumes do with it). A
        cancellation records nothing either and gives the lease up.
        """
        arguments = codec.loads(self._arguments, where=f"oplog {self.oplog_id} arguments")
        try:
            value = yield CallUser(function, tuple(arguments["args"]),
                                   {**arguments["kwargs"], "chttp_context": context})
        except asyncio.CancelledError:
            # The task was cancelled (mid-send, say): what it recorded stays, and the
            # lease goes now, so a resume need not wait for it (same message ids).
            yield from self._give_up()
            raise
        except Exception as error:
            poisoned = self._poisoned
            if isinstance(error, NonDeterminismError) or poisoned is not None:
                yield from self._give_up()
                if poisoned is None or error is poisoned:
                    raise
                raise poisoned from error
            yield from self._finish(OPLOG_FAILED, {"error": codec.exception_record(error)})
            raise
        if self._poisoned is not None:
            yield from self._give_up()
            raise self._poisoned
        try:
            encoded = codec.encode(value)
        except TypeError as error:
            yield from self._finish(OPLOG_FAILED, {"error": codec.exception_record(error)})
            raise
        yield from self._finish(OPLOG_DONE, {"value": encoded})
        return codec.decode(encoded)

    def flush_steps(self) -> Steps[None]:
        """Write buffered records now, if there are any (a handler's request is over)."""
        if self._writes:
            yield from self._commit([])

    # -- numbering and checks ------------------------------------------------------------

    def _guarded(self, what: str, steps: Steps[T]) -> Steps[T]:
        """``steps`` as the run's one step in flight (another at once is refused: module
        docstring); if they end the run (cancelled, or poisoned: refused, diverged), the
        lease is freed here and now, by each task of the run that sees it. A refused
        step's release can come before the other step's write in flight (the intent
        commit that inserts the oplog row, leased) and free nothing; that step's own
        release follows its write, since a write is waited for even when its task is
        cancelled (:func:`~chttp_client.effects.run_blocking`)."""
        if self._in_flight is not None:
            error = ConcurrentStepsError(self.oplog_id, self._number + 1, self._in_flight, what)
            if self._poisoned is None:
                self._poisoned = error
            raise error
        self._in_flight = what
        try:
            return (yield from steps)
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError) or error is self._poisoned:
                yield from self._give_up()
            raise
        finally:
            self._in_flight = None

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

    def _deliver(self, record: StepRecord, deadline: float | None) -> Steps[httpx.Response]:
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

        # Held for the whole run by call_steps; here too for a handler's run (no call).
        with observed, services.heartbeat.hold(self.oplog_id, self._owner):
            yield from answer_recorded_send(
                record, client=self._client, policy=services.retry, clock=services.clock,
                deadline=deadline, run_deadline=self._run_deadline,
                on_attempt=on_attempt, on_answer=on_answer, on_wait=self._renew_lease_if_due,
                count_attempt=lambda attempts: self._count_attempt(record, attempts),
                prepaid=record.number > len(self._recorded),
            )
            observed.settled(record)
        # Buffered: the oplog's next commit records it, and only then may it be
        # acknowledged (chttp_client.context says why).
        self._writes.answers.append(record)
        if record.message_url is not None:
            self._writes.acks.append((record.number, record.message_url))
        self._event("after-step", record.number, KIND_SEND, record.name, record.message_id, body)
        response: httpx.Response = self._replay(record)
        return response

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
