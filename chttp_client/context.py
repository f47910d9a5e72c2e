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

The rules themselves live in :mod:`chttp_client.steps`, written once for ``def`` and
``async def`` functions; this class is the face a ``def`` function sees, and
:class:`~chttp_client.async_context.AsyncResumableContext` the one an ``async def``
function awaits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

import httpx

from chttp_client.effects import SyncExecutor
from chttp_client.services import RunServices
from chttp_client.shorthands import SendShorthands
from chttp_client.steps import RunSteps, SendOptions

__all__ = ["ResumableContext", "RunServices"]  # RunServices: re-exported for its users


class ResumableContext(RunSteps, SendShorthands):
    """The ``chttp_context`` argument of a ``def`` resumable function (module docstring).

    Not shared between threads: one call of a function owns one context. Made by
    :class:`~chttp_client.journal.Journal` (``run``/``resume``) and by
    :func:`~chttp_client.incoming.open_incoming_context`, never by a function itself.
    Takes the keyword arguments of :class:`~chttp_client.steps.RunSteps`.
    """

    def __init__(self, services: RunServices, **options: Any) -> None:
        super().__init__(services, **options)
        self._executor = SyncExecutor(services.http_client, services.sleep)

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
        return self._executor.run(self.persist_steps(value_or_callable, args, kwargs))

    def checkpoint(self) -> None:
        """Commit every buffered record now (one commit; nothing to write: no commit).

        For a function about to cause a side effect outside the journal that depends on
        persisted values or on a send's answer (see :meth:`persist`). On a replay it
        writes only what this run added since the recorded steps, which may be nothing.
        """
        self._executor.run(self.checkpoint_steps())

    def now(self) -> datetime:
        """The current UTC time, persisted (``persist(utcnow)``)."""
        return self._executor.run(self.now_steps())

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
        options = SendOptions(json=json, content=content, headers=headers, deadline=deadline)
        return self._executor.run(self.send_steps(method, url, options))

    def call(self, function: Callable[..., Any]) -> Any:
        """Run ``function`` with the recorded arguments and record how it ended.

        A :class:`~chttp_client.errors.NonDeterminismError` or an unreadable record's
        :class:`~chttp_client.codec.CodecError` (even one the function swallowed)
        records nothing: the oplog stays as it was, and :meth:`Journal.resume_all
        <chttp_client.journal.Journal.resume_all>` abandons it with the error as its reason.
        """
        return self._executor.run(self.call_steps(function, self))

    def flush(self) -> None:
        """Write buffered records now, if there are any (a handler's request is over)."""
        self._executor.run(self.flush_steps())
