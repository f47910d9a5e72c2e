"""One step logic, two executors: the sender's I/O as *effects* a generator yields.

A resumable function may be ``def`` or ``async def``; its steps must follow the same
rules either way (numbering, replay, determinism checks, ids, leases, the write buffer
and the oplog's SQL — DESIGN.md "One transaction core for sync and async"). So the rules
are written once, as generators that never perform I/O themselves
(:mod:`chttp_client.steps`, :func:`chttp_client.sending.deliver_steps`): where they need
the outside world they ``yield`` an effect and receive its result (or have its
exception thrown in), in the sans-IO manner of h11. Two small drivers perform the
effects:

* :class:`SyncExecutor` calls the store, sends with an ``httpx.Client`` and sleeps with
  the journal's ``sleep`` — exactly what the code did before effects existed;
* :class:`AsyncExecutor` runs the store's (synchronous SQLAlchemy) calls in a worker
  thread (:func:`run_blocking`), sends with an ``httpx.AsyncClient``, sleeps with
  ``asyncio.sleep`` and awaits an ``async def`` callable — so neither journal I/O nor
  HTTP ever blocks the event loop.

Why threads for the journal rather than a second, async SQL layer: the oplog's SQL
(:mod:`chttp_client.oplog_store`) is then the very same statements on the very same
engine for both kinds of function — no second copy to drift — and any engine a host
gives the journal (psycopg2, SQLite) works unchanged. A run makes *n* + 1 commits for
*n* sends, so the thread hop (tens of microseconds) is small beside the commit itself.

The effects:

=============  ===============================  ======================================
effect         sync                             async
=============  ===============================  ======================================
``Blocking``   ``function(*args, **kwargs)``    the same in a worker thread, awaited
``Http``       ``client.send(request)``         ``await client.send(request)``
``Sleep``      ``sleep(seconds)``               ``await async_sleep(seconds)``
``Pause``      nothing                          ``await asyncio.sleep(0)``
``CallUser``   ``function(*args, **kwargs)``    the same, awaited if it returns an awaitable
``Either``     ``sync()``                       ``await asynchronous()``
=============  ===============================  ======================================
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generator, TypeVar, Union

import httpx

__all__ = [
    "Blocking", "Http", "Sleep", "Pause", "CallUser", "Either", "Effect", "Steps", "ResumeStopped",
    "SyncExecutor", "AsyncExecutor", "run_blocking", "await_thread",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Blocking:
    """A synchronous call into the journal's store (SQL): its result is sent back."""

    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Http:
    """One attempt of a request; the response (body read) is sent back, a transport
    error thrown in."""

    request: httpx.Request


@dataclass(frozen=True)
class Sleep:
    """Wait between attempts."""

    seconds: float


@dataclass(frozen=True)
class Pause:
    """Let the loop's other tasks run once (sync: nothing to do)."""


@dataclass(frozen=True)
class CallUser:
    """Call the user's code (the function itself, a ``persist()`` callable)."""

    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Either:
    """Work that has its own sync and async forms (resuming one oplog of either kind)."""

    sync: Callable[[], Any]
    asynchronous: Callable[[], Awaitable[Any]]


Effect = Union[Blocking, Http, Sleep, Pause, CallUser, Either]
#: A generator of step logic: yields effects, returns ``T``.
Steps = Generator[Effect, Any, T]


class ResumeStopped(asyncio.CancelledError):
    """A run was stopped (``journal.close()``, interpreter exit) before its end; it resumes later.

    A cancellation, not the function's own failure: the run records nothing more and
    gives its lease up, and the next start resends with the same ids. Raised at a wait
    between attempts (:mod:`chttp_client.background`) and by a send whose HTTP client
    the journal closed meanwhile — recorded as the function's error, that closed client
    would fail an oplog whose message may well have been delivered.
    """


def _closed() -> ResumeStopped:
    return ResumeStopped("the journal's HTTP client was closed during this run: nothing more is "
                         "recorded; the next resume sends again with the same id")


class SyncExecutor:
    """Performs effects in the calling thread (a ``def`` resumable function)."""

    def __init__(self, client: httpx.Client, sleep: Callable[[float], None]) -> None:
        self.client = client
        self.sleep = sleep

    def run(self, steps: Steps[T]) -> T:
        """Drive ``steps`` to its end and return its value (or raise what it raised)."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            value, error = None, None
            try:
                value = self._perform(effect)
            except BaseException as raised:  # noqa: BLE001 - thrown into the step logic
                error = raised

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Blocking):
            return effect.function(*effect.args, **effect.kwargs)
        if isinstance(effect, Http):
            if self.client.is_closed:
                raise _closed()
            try:
                response = self.client.send(effect.request)
            except RuntimeError:  # httpx: "the client has been closed" (by another thread)
                if self.client.is_closed:
                    raise _closed() from None
                raise
            response.read()
            return response
        if isinstance(effect, Sleep):
            self.sleep(effect.seconds)
            return None
        if isinstance(effect, Pause):
            return None
        if isinstance(effect, CallUser):
            return effect.function(*effect.args, **effect.kwargs)
        return effect.sync()


class AsyncExecutor:
    """Performs effects without blocking the event loop (an ``async def`` function)."""

    def __init__(self, client: httpx.AsyncClient | None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.client = client
        self.sleep = sleep

    async def run(self, steps: Steps[T]) -> T:
        """Drive ``steps`` to its end and return its value (or raise what it raised)."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            value, error = None, None
            try:
                value = await self._perform(effect)
            except BaseException as raised:  # noqa: BLE001 - thrown into the step logic
                error = raised

    async def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Blocking):
            return await run_blocking(effect.function, *effect.args, **effect.kwargs)
        if isinstance(effect, Http):
            if self.client is None:
                raise RuntimeError("this executor makes no sends (a run's context has the client)")
            if self.client.is_closed:
                raise _closed()
            try:
                response = await self.client.send(effect.request)
            except RuntimeError:
                if self.client.is_closed:
                    raise _closed() from None
                raise
            await response.aread()
            return response
        if isinstance(effect, Sleep):
            await self.sleep(effect.seconds)
            return None
        if isinstance(effect, Pause):
            await asyncio.sleep(0)
            return None
        if isinstance(effect, CallUser):
            result = effect.function(*effect.args, **effect.kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result
        return await effect.asynchronous()


async def run_blocking(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` in a worker thread; a cancellation waits for it to end.

    A thread cannot be interrupted, and a journal write it is making (an intent commit,
    the oplog row's insert) lands whether or not anyone still waits. So a cancelled
    caller first lets the call finish, *then* sees :class:`asyncio.CancelledError`:
    the journal's state is settled when the cancellation reaches the step logic, which
    can then give the lease up (:mod:`chttp_client.steps`) knowing no write of its own
    is still in flight.

    The thread is awaited as the executor's future, not as a task (what
    ``asyncio.to_thread`` would make): ``asyncio.run`` cancels *every* task left at its
    end, and a cancelled task is done at once while its thread goes on — a run's
    give-up then freed the lease before its own intent commit inserted the oplog row,
    leased (tests/client/test_effects.py).
    """
    call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
    thread: asyncio.Future[T] = asyncio.get_running_loop().run_in_executor(None, call)
    return await await_thread(thread)


async def await_thread(thread: asyncio.Future[T], on_cancel: Callable[[], object] | None = None) -> T:
    """Await ``thread`` (a worker thread's future, not a task); cancelled, call
    ``on_cancel`` (a way to stop the thread early: :meth:`Background.in_thread
    <chttp_client.background.Background.in_thread>` stops its run), wait for the thread
    to end all the same — cancelled again: keep waiting — and then raise the
    cancellation. The thread's own outcome is retrieved and dropped: the cancellation is
    what the caller sees."""
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        while not thread.done():
            try:
                await asyncio.wait({thread})
            except asyncio.CancelledError:  # cancelled again: still wait for the thread
                continue
        if not thread.cancelled():
            thread.exception()
        raise
