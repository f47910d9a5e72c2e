"""The sender scenario: resumable functions, 10 ``persist()`` steps and one certified send.

Each function records ten values, then makes one certified ``POST /items`` to the
certified bench server, sequentially (one caller). Commits are counted two honest ways:
SQLAlchemy's ``commit`` event on the journal's engine, and the ``xact_commit`` delta of
the journal's own database in ``pg_stat_database`` (which also sees the background
acknowledgement writes). The journal lives in a database of its own on the same
cluster, so the receiver's commits are counted apart. If :mod:`chttp_client` has no
``resumable``/``Journal`` yet, the scenario says so instead of measuring something else.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from bench.servers import Server

if TYPE_CHECKING:
    from bench.cluster import BenchDatabase
    from bench.scenarios import Options

__all__ = ["run_sender", "PERSIST_STEPS", "STATS_FLUSH_WAIT"]

PERSIST_STEPS = 10

#: PostgreSQL 15+ backends report their commits to ``pg_stat_database`` when they go
#: idle, at most every 10 s (``PGSTAT_IDLE_INTERVAL``); pooled connections sit idle,
#: so a delta read sooner misses most of them (the 0.0 of earlier runs).
STATS_FLUSH_WAIT = 11.0


def _xact_commits(db: BenchDatabase, database: str) -> int:
    return int(db.scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                         (database,)))


def run_sender(db: BenchDatabase, options: Options) -> dict[str, object]:
    try:
        from chttp_client import Journal, resumable
    except ImportError:
        return {"skipped": "chttp_client not ready (no resumable/Journal in chttp_client)"}
    journal_db = "bench_sender"
    journal_url = db.cluster.create_database(journal_db)
    commits = {"journal": 0}
    with Server("certified", db.url, workers=options.workers, threads=options.threads) as server:
        url = f"http://{server.address}/items"
        journal = Journal(journal_url)
        event.listen(journal.engine, "commit",
                     lambda _connection: commits.__setitem__("journal", commits["journal"] + 1))

        # A fresh name per run: the registry of resumable functions is process-wide.
        @resumable(journal, name=f"bench.sender.transfer.{uuid.uuid4().hex[:8]}")
        def transfer(amount: int, steps: int = PERSIST_STEPS, sends: int = 1, *,
                     chttp_context: Any) -> int:
            total = 0
            for step in range(steps):
                total += chttp_context.persist(amount + step)
            status = 0
            for _send in range(sends):
                status = chttp_context.post(url, json={"amount": total}).status_code
            return int(status)

        def engine_commits_per_function(steps: int, sends: int, count: int) -> float:
            commits["journal"] = 0
            for n in range(count):
                transfer(n, steps, sends)
            return commits["journal"] / count

        try:
            transfer(0)  # schema, pools and code paths warm before the clock starts
            journal.wait_for_acknowledgements()
            commits["journal"] = 0
            time.sleep(STATS_FLUSH_WAIT)
            before_journal = _xact_commits(db, journal_db)
            before_receiver = _xact_commits(db, db.name)
            statuses: dict[int, int] = {}
            began = time.perf_counter()
            for n in range(options.sender_functions):
                status = transfer(n)
                statuses[status] = statuses.get(status, 0) + 1
            elapsed = time.perf_counter() - began
            engine_commits_at_return = commits["journal"]
            journal.wait_for_acknowledgements()
            time.sleep(STATS_FLUSH_WAIT)
            functions = options.sender_functions
            engine_commits_with_acks = commits["journal"]
            after_journal = _xact_commits(db, journal_db)
            after_receiver = _xact_commits(db, db.name)
            # The marginal cost of one more persist() step and one more send, in commits.
            variants = max(5, functions // 10)
            base = engine_commits_per_function(0, 1, variants)
            per_persist = (engine_commits_per_function(PERSIST_STEPS, 1, variants) - base) \
                / PERSIST_STEPS
            per_send = engine_commits_per_function(0, 2, variants) - base
            journal.wait_for_acknowledgements()
            from bench.dbos_sender import run_dbos

            try:
                dbos = run_dbos(db, server.address, functions)
            except Exception as exc:  # report the failure, keep the resumable figures
                dbos = {"skipped": f"DBOS run failed: {type(exc).__name__}: {exc}"}
            return {
                "dbos": dbos,
                "commits_per_extra_persist": per_persist,
                "commits_per_extra_send": per_send,
                "commits_0_persist_1_send": base,
                "functions": functions,
                "functions_per_s": functions / elapsed,
                "statuses": statuses,
                "journal_commits_per_send": engine_commits_at_return / functions,
                "journal_commits_per_function_with_acks": engine_commits_with_acks / functions,
                "journal_xact_commits_per_function":
                    (after_journal - before_journal) / functions,
                "receiver_xact_commits_per_function":
                    (after_receiver - before_receiver) / functions,
            }
        finally:
            journal.close()
