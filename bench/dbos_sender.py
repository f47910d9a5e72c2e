"""The sender's peer: the same function as a DBOS Transact workflow (issue 12 item 3).

bench/sender.py runs a ``@resumable`` function: ten persisted values, then one
certified ``POST /items`` to the certified bench server. Here the same function is a
DBOS workflow: ten ``@DBOS.step()`` calls returning the values (DBOS checkpoints each
step's output in its system database), then one step that POSTs to the same receiver
with the workflow's id as ``X-Message-ID`` (DBOS retries a step whose outcome was not
recorded, so the receiver's exactly-once answer is what makes the POST safe, as for
the resumable function). DBOS's system database lives on the same cluster, in a
database of its own, so its commits are counted apart: the ``xact_commit`` delta of
that database in ``pg_stat_database``, per function, next to the journal's.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from bench.sender import PERSIST_STEPS, STATS_FLUSH_WAIT

if TYPE_CHECKING:
    from bench.cluster import BenchDatabase

__all__ = ["run_dbos"]


def _xact_commits(db: BenchDatabase, database: str) -> int:
    return int(db.scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                         (database,)))


def run_dbos(db: BenchDatabase, address: str, functions: int) -> dict[str, object]:
    """Run ``functions`` workflows one after another against the server at ``address``."""
    try:
        import httpx
        from dbos import DBOS, SetWorkflowID
    except ImportError as exc:
        return {"skipped": f"dbos not installed ({exc}; pip install dbos)"}
    system_db = "bench_dbos"
    system_url = db.cluster.create_database(system_db)
    url = f"http://{address}/items"
    client = httpx.Client(timeout=30)
    DBOS(config={"name": "chttp-bench", "system_database_url": system_url,
                 "log_level": "WARNING", "console_log_level": "WARNING"})

    @DBOS.step()
    def persist_value(value: int) -> int:
        return value

    @DBOS.step()
    def post_once(total: int) -> int:
        workflow_id = DBOS.workflow_id
        response = client.post(url, json={"amount": total},
                               headers={"X-Message-ID": f"dbos-{workflow_id}"})
        return response.status_code

    @DBOS.workflow()
    def transfer(amount: int) -> int:
        total = 0
        for step in range(PERSIST_STEPS):
            total += persist_value(amount + step)
        return post_once(total)

    try:
        DBOS.launch()
        tag = uuid.uuid4().hex[:8]

        def run(n: int) -> int:
            with SetWorkflowID(f"{tag}-{n}"):
                return int(transfer(n))

        run(-1)  # tables, pools and code paths warm before the clock starts
        time.sleep(STATS_FLUSH_WAIT)
        # DBOS's background threads (queue and schedule pollers) commit while idle too:
        # measured over one idle window, then subtracted from the run's window.
        idle_began, idle_before = time.perf_counter(), _xact_commits(db, system_db)
        time.sleep(STATS_FLUSH_WAIT)
        before = _xact_commits(db, system_db)
        idle_per_s = (before - idle_before) / (time.perf_counter() - idle_began)
        window_began = time.perf_counter()
        statuses: dict[int, int] = {}
        began = time.perf_counter()
        for n in range(functions):
            status = run(n)
            statuses[status] = statuses.get(status, 0) + 1
        elapsed = time.perf_counter() - began
        time.sleep(STATS_FLUSH_WAIT)
        after = _xact_commits(db, system_db)
        idle = idle_per_s * (time.perf_counter() - window_began)
        result: dict[str, Any] = {
            "functions": functions,
            "functions_per_s": functions / elapsed,
            "statuses": statuses,
            "xact_commits_per_function": (after - before) / functions,
            "idle_xact_commits_per_s": idle_per_s,
            "xact_commits_per_function_less_idle": (after - before - idle) / functions,
        }
        return result
    finally:
        DBOS.destroy()
        client.close()
