"""The async executor's journal writes in worker threads (:func:`chttp_client.effects.run_blocking`).

A cancelled write's caller must see the cancellation only once the thread has ended:
the step logic then gives the run's lease up, and a write still in flight (the intent
commit that inserts the oplog row, leased) would land after that release and keep the
lease held until it lapses.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading

from chttp_client.effects import run_blocking


def test_a_write_cancelled_as_asyncio_run_ends_is_waited_for_though_every_task_is_cancelled():
    # asyncio.run cancels every task left at its end, not just the ones a run awaits:
    # done here as asyncio.runners does it, so that the thread can be let go afterwards.
    entered, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def write() -> str:
        entered.set()
        release.wait(60)
        seen.append("write ended")
        return "written"

    async def step() -> None:
        try:
            await run_blocking(write)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        task = asyncio.create_task(step())
        await asyncio.to_thread(entered.wait, 60)
        for other in asyncio.all_tasks():
            if other is not asyncio.current_task():
                other.cancel()
        try:
            for _ in range(50):             # the loop turns: nothing may end the step yet
                await asyncio.sleep(0)
            assert seen == [] and not task.done()
        finally:
            release.set()
        await asyncio.wait({task})
        assert task.cancelled()

    asyncio.run(main())
    assert seen == ["write ended", "cancelled"]


def test_a_write_keeps_the_callers_context_variables():
    where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")

    async def main() -> str:
        where.set("the caller's")
        return await run_blocking(where.get)

    assert asyncio.run(main()) == "the caller's"
