"""The async sender's peer: the same function as a DBOS async workflow (issue 19 item 7).

bench/async_sender.py runs an ``async def`` resumable function — ten persisted values,
then one certified ``POST /items`` — many at once on one event loop. Here the same
function is an ``async def`` DBOS workflow of ``async def`` steps: ten steps returning
the values (DBOS checkpoints each output in its system database), then one step that
POSTs with an ``httpx.AsyncClient`` to the same receiver, the workflow's id as
``X-Message-ID`` (as in bench/dbos_sender.py: DBOS retries a step whose outcome was not
recorded, the receiver's exactly-once answer makes the retry safe). The workflows are
awaited directly from the caller's loop (not DBOS's background loop), under the same
``gather`` and the same cap on functions in flight. DBOS's system database is a
database of its own on the same cluster; its ``xact_commit`` delta per function is
reported with and without its idle pollers' commits, as for the sync row.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from bench.async_sender import gather_timed, xact_commits
from bench.sender import PERSIST_STEPS, STATS_FLUSH_WAIT

if TYPE_CHECKING:
    from bench.cluster import BenchDatabase

__all__ = ["run_dbos_async"]


def run_dbos_async(db: BenchDatabase, address: str, functions: int,
                   concurrency: int) -> dict[str, object]:
    """Run ``functions`` async workflows, ``concurrency`` at once, against ``address``."""
    try:
        import httpx
        from dbos import DBOS, SetWorkflowID
    except ImportError as exc:
        return {"skipped": f"dbos not installed ({exc}; pip install dbos)"}
    system_db = "bench_dbos_async"
    system_url = db.cluster.create_database(system_db)
    url = f"http://{address}/items"
    clients: dict[str, httpx.AsyncClient] = {}
    DBOS(config={"name": "chttp-bench-async", "system_database_url": system_url,
                 "log_level": "WARNING", "console_log_level": "WARNING"})

    @DBOS.step()
    async def persist_value(value: int) -> int:
        return value

    @DBOS.step()
    async def post_once(total: int) -> int:
        response = await clients["http"].post(
            url, json={"amount": total}, headers={"X-Message-ID": f"dbos-{DBOS.workflow_id}"})
        return response.status_code

    @DBOS.workflow()
    async def transfer(amount: int) -> int:
        total = 0
        for step in range(PERSIST_STEPS):
            total += await persist_value(amount + step)
        return await post_once(total)

    tag = uuid.uuid4().hex[:8]

    async def run(n: int) -> int:
        with SetWorkflowID(f"async-{tag}-{n}"):
            return int(await transfer(n))

    async def measure() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as client:
            clients["http"] = client
            await gather_timed(run, range(-concurrency, 0), concurrency)  # warm
            await asyncio.sleep(STATS_FLUSH_WAIT)
            # DBOS's background pollers commit while idle too: measured over one idle
            # window, then subtracted from the run's window.
            idle_began, idle_before = time.perf_counter(), xact_commits(db, system_db)
            await asyncio.sleep(STATS_FLUSH_WAIT)
            before = xact_commits(db, system_db)
            idle_per_s = (before - idle_before) / (time.perf_counter() - idle_began)
            window_began = time.perf_counter()
            statuses, elapsed, cpu = await gather_timed(run, range(functions), concurrency)
            await asyncio.sleep(STATS_FLUSH_WAIT)
            after = xact_commits(db, system_db)
            idle = idle_per_s * (time.perf_counter() - window_began)
        return {
            "functions": functions,
            "concurrency": concurrency,
            "functions_per_s": functions / elapsed,
            "cpu_ms_per_function": cpu * 1000 / functions,
            "statuses": statuses,
            "xact_commits_per_function": (after - before) / functions,
            "idle_xact_commits_per_s": idle_per_s,
            "xact_commits_per_function_less_idle": (after - before - idle) / functions,
        }

    try:
        DBOS.launch()
        return asyncio.run(measure())
    finally:
        DBOS.destroy()
