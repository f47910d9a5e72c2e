"""``chttp_context`` of an ``async def`` resumable function: the same steps, awaited.

::

    @resumable(journal)
    async def transfer(url, amount, *, chttp_context):
        ref = await chttp_context.persist(secrets.randbelow, 10**6)
        response = await chttp_context.post(url, json={"ref": ref, "amount": amount})
        return response.json()["id"]

    asyncio.run(transfer("http://…/transfers", 5))

Every method awaits the step logic of :mod:`chttp_client.steps` — the very code a
``def`` function's :class:`~chttp_client.context.ResumableContext` runs — through an
:class:`~chttp_client.effects.AsyncExecutor`: the journal's SQL runs in a worker thread
and sends go through an ``httpx.AsyncClient``, so the event loop is never blocked by
either. ``persist`` takes a value, a callable, or a coroutine function (awaited on the
first run only). The durability arrangement, replay and determinism rules are those of
:mod:`chttp_client.context`.

Steps of one run are awaited one after the other: two in flight at once (``gather`` of
two ``post()`` calls) raise :class:`~chttp_client.errors.ConcurrentStepsError`
(:mod:`chttp_client.steps` says why). A task cancelled mid-step leaves what it recorded
and gives its lease up: the oplog resumes at once with the same message ids.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Awaitable, Callable, Mapping, Sequence

import httpx

from chttp_client.effects import AsyncExecutor
from chttp_client.services import RunServices
from chttp_client.shorthands import AsyncSendShorthands
from chttp_client.steps import RunSteps, SendOptions

__all__ = ["AsyncResumableContext"]


class AsyncResumableContext(RunSteps, AsyncSendShorthands):
    """The ``chttp_context`` argument of an ``async def`` resumable function.

    Made by :class:`~chttp_client.journal.Journal` (``run_async``/``resume_async``) with
    the ``httpx.AsyncClient`` of the running loop; takes the keyword arguments of
    :class:`~chttp_client.steps.RunSteps`. One task of one loop owns it.
    """

    def __init__(self, services: RunServices, *, client: httpx.AsyncClient,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, **options: Any) -> None:
        super().__init__(services, client=client, **options)
        self._executor = AsyncExecutor(client, sleep)

    async def persist(self, value_or_callable: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Record a value once; return the recorded value on replay.

        ``await persist(value)``, ``await persist(callable, *args)`` or ``await
        persist(coroutine_function, *args)`` — the callable runs (and is awaited) on the
        first run only. As :meth:`ResumableContext.persist
        <chttp_client.context.ResumableContext.persist>`: buffered until the next send,
        so call :meth:`checkpoint` before a side effect that must only see this value.
        """
        return await self._executor.run(self.persist_steps(value_or_callable, args, kwargs))

    async def checkpoint(self) -> None:
        """Commit every buffered record now (nothing to write: no commit)."""
        await self._executor.run(self.checkpoint_steps())

    async def now(self) -> datetime:
        """The current UTC time, persisted."""
        return await self._executor.run(self.now_steps())

    async def send(
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
        """A certified send, awaited (:meth:`ResumableContext.send
        <chttp_client.context.ResumableContext.send>` says what it returns and raises)."""
        options = SendOptions(json=json, content=content, headers=headers, deadline=deadline)
        return await self._executor.run(self.send_steps(method, url, options))

    async def call(self, function: Callable[..., Any]) -> Any:
        """Await ``function`` with the recorded arguments and record how it ended."""
        return await self._executor.run(self.call_steps(function, self))

    async def flush(self) -> None:
        """Write buffered records now, if there are any."""
        await self._executor.run(self.flush_steps())
