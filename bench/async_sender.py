"""The async sender row (issue 19 item 7): ``async def`` resumable functions, many at once.

The function of bench/sender.py — ten ``persist()`` values, then one certified ``POST
/items`` to the certified bench server — written as an ``async def`` resumable function
(``await chttp_context.persist(…)``, ``await chttp_context.post(…)``), and
``functions`` of them run under one ``asyncio.gather`` on one event loop, at most
:data:`CONCURRENCY` in flight (a service's loop, not one caller: what async is for).
bench/dbos_async_sender.py runs the same function as a DBOS async workflow the same
way, against the same receiver and the same cluster. Commits are counted as in
bench/sender.py: SQLAlchemy ``commit`` events on the journal's engine until the
functions return, and the ``xact_commit`` delta of the journal's own database
(acknowledgements included) and of the receiver's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any, Awaitable, Callable, cast

from sqlalchemy import event

from bench.sender import PERSIST_STEPS, STATS_FLUSH_WAIT
from bench.servers import Server

if TYPE_CHECKING:
    from bench.cluster import BenchDatabase
    from bench.scenarios import Options

__all__ = ["run_async_sender", "gather_timed", "xact_commits", "CONCURRENCY"]

#: Functions in flight at once on the loop, for both contenders.
CONCURRENCY = 16


def xact_commits(db: BenchDatabase, database: str) -> int:
    """The cluster's count of committed transactions in ``database`` so far."""
    return int(db.scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                         (database,)))


async def gather_timed(run: Callable[[int], Awaitable[int]], numbers: range,
                       concurrency: int) -> tuple[dict[int, int], float, float]:
    """``run(n)`` for every ``n`` under one ``gather``, at most ``concurrency`` at once.

    Returns the count of each answer status, the seconds the gather took, and the CPU
    seconds this process spent meanwhile (every thread: the loop, the worker threads of
    the journal or of DBOS, background acknowledgements and pollers). On a shared,
    saturated machine the CPU time moves less than the wall clock.
    """
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int) -> int:
        async with gate:
            return await run(n)

    began, cpu_began = time.perf_counter(), time.process_time()
    answers = await asyncio.gather(*(one(n) for n in numbers))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    statuses: dict[int, int] = {}
    for status in answers:
        statuses[status] = statuses.get(status, 0) + 1
    return statuses, elapsed, cpu


def run_async_sender(db: BenchDatabase, options: Options) -> dict[str, object]:
    try:
        from chttp_client import Journal, resumable
    except ImportError:
        return {"skipped": "chttp_client not ready (no resumable/Journal in chttp_client)"}
    journal_db = "bench_async_sender"
    journal_url = db.cluster.create_database(journal_db)
    concurrency = options.sender_concurrency
    functions = options.sender_functions
    commits = {"journal": 0}
    with Server("certified", db.url, workers=options.workers, threads=options.threads) as server:
        url = f"http://{server.address}/items"
        journal = Journal(journal_url)
        event.listen(journal.engine, "commit",
                     lambda _connection: commits.__setitem__("journal", commits["journal"] + 1))

        # A fresh name per run: the registry of resumable functions is process-wide.
        @resumable(journal, name=f"bench.async_sender.transfer.{uuid.uuid4().hex[:8]}")
        async def transfer(amount: int, *, chttp_context: Any) -> int:
            total = 0
            for step in range(PERSIST_STEPS):
                total += await chttp_context.persist(amount + step)
            response = await chttp_context.post(url, json={"amount": total})
            return int(response.status_code)

        # The decorated function supplies chttp_context itself: called with the amount.
        run = cast(Callable[[int], Awaitable[int]], transfer)

        async def measure() -> dict[str, object]:
            # Schema, pools, the loop's AsyncClient and code paths warm before the clock.
            await gather_timed(run, range(-concurrency, 0), concurrency)
            await asyncio.to_thread(journal.wait_for_acknowledgements)
            await asyncio.sleep(STATS_FLUSH_WAIT)
            before_journal = xact_commits(db, journal_db)
            before_receiver = xact_commits(db, db.name)
            commits["journal"] = 0
            statuses, elapsed, cpu = await gather_timed(run, range(functions), concurrency)
            engine_commits_at_return = commits["journal"]
            await asyncio.to_thread(journal.wait_for_acknowledgements)
            await asyncio.sleep(STATS_FLUSH_WAIT)
            return {
                "functions": functions,
                "concurrency": concurrency,
                "functions_per_s": functions / elapsed,
                "cpu_ms_per_function": cpu * 1000 / functions,
                "statuses": statuses,
                "journal_commits_per_function": engine_commits_at_return / functions,
                "journal_xact_commits_per_function":
                    (xact_commits(db, journal_db) - before_journal) / functions,
                "receiver_xact_commits_per_function":
                    (xact_commits(db, db.name) - before_receiver) / functions,
            }

        try:
            result = asyncio.run(measure())
        finally:
            journal.close()
        from bench.dbos_async_sender import run_dbos_async

        try:
            result["dbos"] = run_dbos_async(db, server.address, functions, concurrency)
        except Exception as exc:  # report the failure, keep the resumable figures
            result["dbos"] = {"skipped": f"DBOS run failed: {type(exc).__name__}: {exc}"}
        return result
