"""Resumes that outlive ``resume_all()``'s timeout, and how they stop at exit.

``journal.resume_all()`` returns within its ``timeout`` (30 s by default) so that one
oplog whose send is still retrying never holds a process's start-up (issue 25). The
oplogs it has not finished by then are reported ``pending`` and go on being resumed,
one after the other, where they were started:

* sync ``resume_all()``: in one daemon thread (``chttp-resume``) per call;
* ``await resume_all_async()``: in one task on the running loop (kept referenced here).

They stop cleanly at interpreter exit (the journal's ``atexit`` hook) and at
``journal.close()``: :meth:`Background.stop`
sets a flag that the journal's waits between attempts check (:meth:`Background.sleep`),
so a run waiting to retry ends with :class:`ResumeStopped` — an
:class:`asyncio.CancelledError`, so a run records nothing more and gives its lease up,
exactly as a cancelled task does — and the next start resumes it with the same ids.
The stop waits at most ``grace`` seconds for the threads: a run inside an attempt (up
to the policy's per-attempt timeout) is left to the interpreter's end, and its lease
to lapse.

A ``def`` function's run that a task performs in a worker thread (``resume_all_async``,
``run_async``) stops the same way when that task is cancelled — at the loop's shutdown,
say — instead of holding the cancellation until its sends' deadline
(:meth:`Background.in_thread`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import weakref
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

from chttp_client.effects import ResumeStopped, await_thread

__all__ = ["Background", "ResumeStopped"]

log = logging.getLogger("chttp_client")
T = TypeVar("T")

#: The stop of the ``def`` run this thread performs for a task (:meth:`Background.in_thread`).
_RUN_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "chttp_run_stop", default=None)


class Background:
    """One journal's background resumes and their stop (see the module docstring)."""

    def __init__(self, sleep: Callable[[], Callable[[float], None]],
                 async_sleep: Callable[[], Callable[[float], Awaitable[None]]], *,
                 grace: float = 2.0) -> None:
        # Callables: the journal's sleep may be replaced after construction (tests do).
        self._sleep = sleep
        self._async_sleep = async_sleep
        self.grace = grace
        self.stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._run_stops: weakref.WeakSet[threading.Event] = weakref.WeakSet()
        self._run_ends: set[threading.Event] = set()   # in_thread runs not yet ended
        self._lock = threading.Lock()

    # -- waits that a stop cuts short ------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """The journal's sleep, ended by :class:`ResumeStopped` once :meth:`stop` was called."""
        sleep, stop = self._sleep(), _RUN_STOP.get() or self.stopping
        if sleep is time.sleep:
            if stop.wait(seconds):
                raise ResumeStopped("stopped while waiting to retry: resumed at the next start")
            return
        sleep(seconds)
        if stop.is_set():
            raise ResumeStopped("stopped while waiting to retry: resumed at the next start")

    async def async_sleep(self, seconds: float) -> None:
        """:meth:`sleep` for ``async def`` runs."""
        await self._async_sleep()(seconds)
        if self.stopping.is_set():
            raise ResumeStopped("stopped while waiting to retry: resumed at the next start")

    async def in_thread(self, function: Callable[[], T]) -> T:
        """``function()`` (a ``def`` run) in a worker thread; cancelled, the run is stopped
        at its next wait (:class:`ResumeStopped`) and this returns once the thread ends."""
        stop = threading.Event()
        self._run_stops.add(stop)
        if self.stopping.is_set():
            stop.set()
        context = contextvars.copy_context()
        context.run(_RUN_STOP.set, stop)
        ended = threading.Event()
        with self._lock:
            self._run_ends.add(ended)

        def run() -> T:
            try:
                return context.run(function)
            finally:
                with self._lock:
                    self._run_ends.discard(ended)
                ended.set()

        thread: asyncio.Future[T] = asyncio.get_running_loop().run_in_executor(None, run)
        return await await_thread(thread, on_cancel=stop.set)

    # -- running past a timeout ------------------------------------------------------------

    def wait_sync(self, work: Callable[[], Any], timeout: float) -> bool:
        """Run ``work()`` in a daemon thread; True if it ended within ``timeout`` seconds
        (its exception raised here), False if it goes on in the background."""
        done = threading.Event()
        box: dict[str, Any] = {}
        state = {"left": False}

        def run() -> None:
            try:
                box["value"] = work()
            except BaseException as error:  # noqa: BLE001 - reported to the caller or logged
                box["error"] = error
            with self._lock:
                done.set()
                self._threads.discard(threading.current_thread())
                if state["left"]:
                    self._report(box.get("error"))

        thread = threading.Thread(target=run, name="chttp-resume", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        done.wait(timeout)
        with self._lock:
            if not done.is_set():
                state["left"] = True
                return False
        thread.join()
        if "error" in box:
            raise box["error"]
        return True

    async def wait_async(self, work: Callable[[], Coroutine[Any, Any, Any]], timeout: float) -> bool:
        """:meth:`wait_sync` as a task on the running loop."""
        task = asyncio.ensure_future(work())
        try:
            await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            task.result()
            return True
        self._tasks.add(task)

        def finished(task: asyncio.Future[Any]) -> None:
            self._tasks.discard(task)
            self._report(None if task.cancelled() else task.exception())

        task.add_done_callback(finished)
        return False

    @staticmethod
    def _report(error: BaseException | None) -> None:
        if isinstance(error, ResumeStopped) or isinstance(error, asyncio.CancelledError):
            log.info("chttp: background resume stopped; the next resume_all() goes on with it")
        elif error is not None:
            log.warning("chttp: background resume ended with %s: %s", type(error).__name__, error)

    # -- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the background resumes at their next wait; wait up to ``grace`` seconds."""
        self.stopping.set()
        for stop in list(self._run_stops):
            stop.set()
        give_up_at = time.monotonic() + self.grace
        with self._lock:
            threads, run_ends = list(self._threads), list(self._run_ends)
        for thread in threads:
            thread.join(max(0.0, give_up_at - time.monotonic()))
        for ended in run_ends:  # a task's def run: its thread, too, before the client closes
            ended.wait(max(0.0, give_up_at - time.monotonic()))
        for task in list(self._tasks):
            try:  # close() may run in a worker thread (aclose): cancel on the task's loop
                task.get_loop().call_soon_threadsafe(task.cancel)
            except RuntimeError:  # that loop is closed: nothing runs there any more
                pass
