"""Running and resuming oplogs: the journal's entry points, for ``def`` and ``async def``.

:class:`Runs` is the part of :class:`~chttp_client.journal.Journal` that starts runs
(``run``, ``run_async``), resumes them (``resume``, ``resume_async``, ``resume_all``,
``resume_all_async``) and abandons them. What a resume decides — finished or open,
which registered version, the lease, the count of resumes without progress, which
trouble abandons an oplog — is written once, as step logic
(:mod:`chttp_client.effects`), and driven synchronously or on an event loop:

* ``resume_all()`` (sync) runs an ``async def`` function's oplog to its end on an event
  loop of its own (:func:`run_coroutine`), so a start-up script, ``chttp-client
  resume`` and a Celery worker resume both kinds;
* ``await resume_all_async()`` (from a running loop: an ASGI app's start-up) awaits
  ``async def`` oplogs on that loop and runs ``def`` ones in a worker thread, so the
  loop is never blocked; the journal's SQL is always in a worker thread there.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, TypeVar

import httpx

from chttp_client import codec, telemetry
from chttp_client.async_context import AsyncResumableContext
from chttp_client.background import Background
from chttp_client.codec import CodecError
from chttp_client.context import ResumableContext
from chttp_client.effects import AsyncExecutor, Blocking, Either, Steps, SyncExecutor
from chttp_client.errors import (
    JournalUnavailable,
    NonDeterminismError,
    OplogAbandonedError,
    OplogBusyError,
    UnknownFunctionError,
)
from chttp_client.leases import new_owner
from chttp_client.loop_clients import LoopClients
from chttp_client.oplog_store import OplogStore
from chttp_client.outage import journal_write
from chttp_client.quarantine import log_unreadable
from chttp_client.records import CELERY_PREFIX, INCOMING_PREFIX, OplogInfo
from chttp_client.registry import registered_functions
from chttp_client.services import RunServices
from chttp_core.schema import OPLOG_OPEN

__all__ = ["Runs", "ResumeOutcome", "run_coroutine"]

log = logging.getLogger("chttp_client")
T = TypeVar("T")


@dataclass(frozen=True)
class ResumeOutcome:
    """What :meth:`Journal.resume_all <chttp_client.journal.Journal.resume_all>` did with
    one open oplog.

    ``status`` is ``done`` (``value`` holds the result), ``failed`` (the function raised
    ``error``, now recorded), ``refused`` (unknown version: the oplog is left open and
    intact), ``unreadable`` (quarantined, :mod:`chttp_client.quarantine`), ``abandoned``
    (non-determinism, or more resumes without progress than ``max_resume_attempts``:
    dead-lettered now), ``busy`` (another live process holds it) or ``pending`` (not
    finished within ``resume_all``'s timeout: it goes on in the background,
    :mod:`chttp_client.background`); ``error`` says why.
    """

    oplog_id: str
    function: str
    version: int
    status: str
    value: Any = None
    error: BaseException | None = None


def run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` to its end from synchronous code and return its result.

    ``asyncio.run`` in this thread; when this thread already runs an event loop (a sync
    call made from async code), in a worker thread with a loop of its own — the caller
    blocks either way, as any synchronous call does.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(1, thread_name_prefix="chttp-async-run") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


class _Progress:
    """The outcomes a resume_all's worker has so far (it may outlive the call)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: builtins.list[ResumeOutcome] = []
        self.left_behind = False


def _counts(outcomes: builtins.list[ResumeOutcome]) -> str:
    return ", ".join(f"{count} {status}" for status, count in Counter(o.status for o in outcomes).items())


def _recorded_result(info: OplogInfo) -> Any:
    result = info.result or {}
    where = f"oplog {info.id} result"
    if "error" in result:
        raise codec.rebuild_exception(result["error"], where=where)
    return codec.decode(result.get("value"), where=where)


class Runs:
    """Running and resuming, mixed into :class:`~chttp_client.journal.Journal`."""

    store: OplogStore
    clock: Callable[[], datetime]
    lease: timedelta
    max_resume_attempts: int | None
    http_client: httpx.Client
    sleep: Callable[[float], None]
    async_sleep: Callable[[float], Awaitable[None]]
    async_clients: LoopClients
    background: Background

    if TYPE_CHECKING:  # defined by Journal
        @property
        def services(self) -> RunServices: ...

        def ensure_schema(self) -> None: ...

        def get(self, oplog_id: str) -> OplogInfo: ...

        def list_open(self) -> builtins.list[OplogInfo]: ...

        def acknowledge_pending(self) -> int: ...

    # -- the two executors -------------------------------------------------------------

    def _run_sync(self, steps: Steps[T]) -> T:
        return SyncExecutor(self.http_client, self.sleep).run(steps)

    async def _run_async(self, steps: Steps[T]) -> T:
        # Only journal I/O and nested runs here: a run's sends use its own context's client.
        return await AsyncExecutor(None, self.async_sleep).run(steps)

    def _call(self, function: Callable[..., Any], options: dict[str, Any]) -> Either:
        """Run ``function`` in a context made of ``options``, the right face for its kind,
        from whichever executor drives the caller."""
        if inspect.iscoroutinefunction(function):
            return Either(lambda: run_coroutine(lambda: self._call_async(function, options)),
                          lambda: self._call_async(function, options))

        def call_sync() -> Any:
            return ResumableContext(self.services, **options).call(function)

        return Either(call_sync, lambda: self.background.in_thread(call_sync))

    async def _call_async(self, function: Callable[..., Any], options: dict[str, Any]) -> Any:
        async with self.async_clients.client() as client:
            context = AsyncResumableContext(self.services, client=client,
                                            sleep=self.background.async_sleep, **options)
            return await context.call(function)

    # -- running ---------------------------------------------------------------------------

    def run(self, name: str, version: int, function: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any], *, oplog_id: str | None = None,
            message_id_for: Callable[[int], str] | None = None) -> Any:
        """Start a new oplog for ``function(*args, **kwargs)`` and run it to the end.

        ``oplog_id`` chooses the new oplog's id (default: a random UUID);
        ``message_id_for(step)`` the ids of its sends (default: random UUIDs). An
        ``async def`` function runs on an event loop of its own (:func:`run_coroutine`).
        """
        return self._run_sync(self._run_steps(name, version, function, args, kwargs,
                                              oplog_id, message_id_for))

    async def run_async(self, name: str, version: int, function: Callable[..., Any],
                        args: tuple[Any, ...], kwargs: dict[str, Any], *, oplog_id: str | None = None,
                        message_id_for: Callable[[int], str] | None = None) -> Any:
        """:meth:`run`, awaited: an ``async def`` function on this loop, a ``def`` one in a
        worker thread. What calling an ``async def`` ``@resumable`` function awaits."""
        return await self._run_async(self._run_steps(name, version, function, args, kwargs,
                                                     oplog_id, message_id_for))

    def _run_steps(self, name: str, version: int, function: Callable[..., Any],
                   args: tuple[Any, ...], kwargs: dict[str, Any], oplog_id: str | None,
                   message_id_for: Callable[[int], str] | None) -> Steps[Any]:
        yield Blocking(self.ensure_schema)
        options = dict(oplog_id=oplog_id or str(uuid.uuid4()), function=name, version=version,
                       arguments=codec.dumps({"args": list(args), "kwargs": kwargs}),
                       message_id_for=message_id_for)
        return (yield self._call(function, options))

    # -- resuming --------------------------------------------------------------------------

    def resume(self, oplog_id: str, *, force: bool = False,
               message_id_for: Callable[[int], str] | None = None) -> Any:
        """Run the open oplog ``oplog_id`` to its end by replaying it; return its result.

        A finished oplog returns (or raises) its recorded result without running anything.
        ``force`` takes the lease even from a live owner (the crash helper uses it).
        """
        return self._run_sync(self._resume_steps(oplog_id, force=force, message_id_for=message_id_for))

    async def resume_async(self, oplog_id: str, *, force: bool = False,
                           message_id_for: Callable[[int], str] | None = None) -> Any:
        """:meth:`resume`, awaited from a running loop (its I/O never blocks the loop)."""
        return await self._run_async(self._resume_steps(oplog_id, force=force,
                                                        message_id_for=message_id_for))

    def _resume_steps(self, oplog_id: str | OplogInfo, *, force: bool = False,
                      only_open: bool = False,
                      message_id_for: Callable[[int], str] | None = None) -> Steps[Any]:
        info = oplog_id if isinstance(oplog_id, OplogInfo) else (yield Blocking(self.get, (oplog_id,)))
        if info.state != OPLOG_OPEN:
            if only_open:  # resume_all: another process finished it since we listed it
                raise OplogBusyError(info.id, "nobody: it finished meanwhile")
            return _recorded_result(info)
        functions = registered_functions(info.function)
        function = functions.get(info.version)
        if function is None:
            raise UnknownFunctionError(info.id, info.function, info.version, sorted(functions))
        owner = new_owner()
        attempts = yield Blocking(self.store.take_lease, (info.id, owner), dict(
            now=self.clock(), lease=self.lease, force=force, count_attempt=True))
        if self.max_resume_attempts is not None and attempts > self.max_resume_attempts:
            yield from self._abandon_steps(info, f"{attempts - 1} resumes made no progress "
                                                 f"(max_resume_attempts={self.max_resume_attempts})")
        telemetry.resumed()
        arguments = yield Blocking(self.store.arguments, (info.id,))
        options = dict(oplog_id=info.id, function=info.function, version=info.version,
                       arguments=arguments, recorded=info.steps, stored=True, owner=owner,
                       message_id_for=message_id_for)
        try:
            return (yield self._call(function, options))
        except (NonDeterminismError, CodecError):  # nothing recorded: the oplog stays open
            yield Blocking(self.store.release_lease, (info.id, owner))
            raise

    def resume_all(self, *, timeout: float | None = 30.0) -> builtins.list[ResumeOutcome]:
        """Resume every open oplog this process can lease, and retry pending acknowledgements.

        Returns within about ``timeout`` seconds (30 by default; ``None``: wait for every
        oplog to end, as ``chttp-client resume`` does), so that one oplog whose send is
        still retrying never holds a start-up: the oplogs not finished by then are
        reported ``pending`` and go on, one after the other, in a background thread
        that stops cleanly at exit (:mod:`chttp_client.background`; a stopped one is
        resumed by the next ``resume_all()``). The outcome is logged at INFO on the
        ``chttp_client`` logger (counts by status).

        Never raises for one oplog's trouble: each gets a :class:`ResumeOutcome`. An oplog
        left ``busy`` (another live process holds it) or ``refused`` (unknown version) is
        also logged at WARNING, so a start-up resume never
        skips one silently. One holding a record this version cannot read is
        *quarantined* (:mod:`chttp_client.quarantine`): left open, not run, ``unreadable``,
        logged with a count and the ids; the others go on. One that diverges (the code
        changed) or was resumed more than ``max_resume_attempts`` times without progress
        is *abandoned* (:meth:`abandon`), reported once at WARNING, and not tried again.
        The journal's database gone (:class:`~chttp_client.errors.JournalUnavailable`,
        the whole journal's trouble, not one oplog's) is raised. ``async def``
        functions' oplogs run to their end on an event loop of their own, one by one.
        """
        return self._run_sync(self._resume_all_steps(timeout))

    async def resume_all_async(self, *, timeout: float | None = 30.0) -> builtins.list[ResumeOutcome]:
        """:meth:`resume_all` from a running event loop (an ASGI app's start-up).

        ``async def`` functions' oplogs run on this loop, ``def`` ones in a worker thread,
        one oplog after the other; the journal's SQL and the pending acknowledgements
        run in worker threads, so the loop keeps serving meanwhile. Past ``timeout``
        the rest is ``pending`` and goes on as a task on this loop (cancelled when the
        loop shuts down: its runs give their leases up). A thread cannot be
        interrupted: cancelled while a ``def`` function's run is in its thread, this
        waits for that run to stop at its next wait between attempts
        (:meth:`Background.in_thread <chttp_client.background.Background.in_thread>`).
        """
        return await self._run_async(self._resume_all_steps(timeout))

    def _resume_all_steps(self, timeout: float | None) -> Steps[builtins.list[ResumeOutcome]]:
        # A database outage here (a failover: every node refusing for a moment) is the
        # library's JournalUnavailable, as anywhere else, never a driver's raw error.
        with journal_write("", lambda: (None, "resume_all() (pending acknowledgements, open "
                                              "oplogs)"), created=False):
            yield Blocking(self.ensure_schema)
            yield Blocking(self.acknowledge_pending)
            listed = [info for info in (yield Blocking(self.list_open))
                      # driven by incoming retries / Celery's redelivery, not by us
                      if not info.function.startswith((INCOMING_PREFIX, CELERY_PREFIX))]
        progress = _Progress()
        work = self._resume_each_steps(listed, progress)
        if timeout is None:
            yield from work
        else:
            yield Either(lambda: self.background.wait_sync(lambda: self._run_sync(work), timeout),
                         lambda: self.background.wait_async(lambda: self._run_async(work), timeout))
        with progress.lock:
            outcomes = list(progress.outcomes)
            progress.left_behind = len(outcomes) < len(listed)
        outcomes += [ResumeOutcome(info.id, info.function, info.version, "pending")
                     for info in listed[len(outcomes):]]
        log_unreadable(outcomes)
        if outcomes:
            log.info("chttp: resume_all: %d open oplog(s): %s%s", len(outcomes), _counts(outcomes),
                     " (pending ones go on in the background)" if progress.left_behind else "")
        return outcomes

    def _resume_each_steps(self, listed: builtins.list[OplogInfo], progress: _Progress) -> Steps[None]:
        for info in listed:
            outcome = yield from self._resume_one_steps(info)
            with progress.lock:
                progress.outcomes.append(outcome)
        with progress.lock:
            if progress.left_behind:
                log.info("chttp: resume_all finished in the background: %s", _counts(progress.outcomes))

    def _resume_one_steps(self, listed: OplogInfo) -> Steps[ResumeOutcome]:
        def outcome(status: str, value: Any = None, error: BaseException | None = None) -> ResumeOutcome:
            return ResumeOutcome(listed.id, listed.function, listed.version, status, value, error)

        try:
            value = yield from self._resume_steps(listed.id, only_open=True)
        except OplogBusyError as error:
            log.warning("chttp: oplog %s (%s v%s) not resumed, busy: %s",
                        listed.id, listed.function, listed.version, error)
            return outcome("busy", error=error)
        except UnknownFunctionError as error:
            log.warning("chttp: oplog %s (%s v%s) not resumed, refused: %s",
                        listed.id, listed.function, listed.version, error)
            return outcome("refused", error=error)
        except CodecError as error:  # quarantined: fixing the row resumes it
            log.warning("chttp: oplog %s (%s v%s) not resumed, unreadable (left open): %s",
                        listed.id, listed.function, listed.version, error)
            return outcome("unreadable", error=error)
        except NonDeterminismError as error:
            # The code changed: no resume will fix it. Not the function's own failure.
            try:
                yield from self._abandon_steps(listed, str(error))
            except (OplogAbandonedError, OplogBusyError) as abandoned:
                return outcome("abandoned", error=abandoned)
            raise AssertionError("_abandon_steps always raises")  # pragma: no cover
        except JournalUnavailable:  # the whole journal's trouble (not one oplog's): raised
            raise
        except OplogAbandonedError as error:  # too many resumes without progress
            return outcome("abandoned", error=error)
        except Exception as error:  # the function's own outcome, now recorded
            return outcome("failed", error=error)
        return outcome("done", value=value)

    # -- abandoning ------------------------------------------------------------------------

    def _abandon_steps(self, info: OplogInfo, reason: str) -> Steps[None]:
        """Record the abandonment, report it once (here), raise it."""
        error = OplogAbandonedError(info.id, reason)
        abandoned = yield Blocking(self.store.abandon, (info.id,), dict(
            reason=reason, now=self.clock(), result={"error": codec.exception_record(error)}))
        if not abandoned:
            raise OplogBusyError(info.id, "nobody: it finished meanwhile")
        telemetry.oplog_state("abandoned")
        log.warning("chttp: oplog %s (%s v%s) abandoned: %s", info.id, info.function, info.version, reason)
        raise error
