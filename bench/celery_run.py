"""The Celery scenario: tasks/s of a task making one POST, plain Celery + httpx against the
same task through :mod:`chttp_client.celery` — the same Redis, the same prefork worker,
the same certified receiver — and the journal's commits per task.

Each round publishes ``sender_functions`` tasks of one kind and times them from the first
publish until every result is in; the kinds alternate, rounds are reported as medians.
Commits are the ``xact_commit`` delta of the journal's own database over the resumable
rounds (after :data:`bench.sender.STATS_FLUSH_WAIT`, so that idle pooled backends have
reported theirs), divided by the tasks run.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.sender import STATS_FLUSH_WAIT, _xact_commits
from bench.servers import Server

if TYPE_CHECKING:
    from bench.cluster import BenchDatabase
    from bench.scenarios import Options

__all__ = ["run_celery"]

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _timed(task: Any, count: int) -> float:
    began = time.perf_counter()
    results = [task.delay(n) for n in range(count)]
    for result in results:
        result.get(timeout=300)
    return count / (time.perf_counter() - began)


def run_celery(db: BenchDatabase, options: Options) -> dict[str, object]:
    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(redis_server):
        return {"skipped": "redis-server is not installed (Debian package redis-server)"}
    try:
        importlib.import_module("celery")
    except ImportError:
        return {"skipped": "celery is not installed (pip install certified-http[celery])"}
    journal_db = "bench_celery"
    journal_url = db.cluster.create_database(journal_db)
    scratch = Path(tempfile.mkdtemp(prefix="chttp-bench-celery-"))
    port = _free_port()
    redis = subprocess.Popen([redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(scratch)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker: subprocess.Popen[bytes] | None = None
    saved = dict(os.environ)
    try:
        with Server("certified", db.url, workers=options.workers, threads=options.threads) as server:
            os.environ.update(BENCH_CELERY_BROKER=f"redis://127.0.0.1:{port}/0",
                              BENCH_CELERY_JOURNAL=journal_url,
                              BENCH_CELERY_RECEIVER=f"http://{server.address}/items")
            # The app reads its broker and journal from the environment when imported:
            # a later run of the same process (--repeat) must build it again, or it keeps
            # talking to the first run's Redis, long gone.
            if "bench.celery_app" in sys.modules:
                tasks = importlib.reload(sys.modules["bench.celery_app"])
            else:
                tasks = importlib.import_module("bench.celery_app")
            log = scratch / "worker.log"
            with open(log, "wb") as output:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
                     "--pool", "prefork", "--concurrency", str(options.workers), "--loglevel",
                     "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=output,
                    stderr=subprocess.STDOUT, start_new_session=True)
            _wait(lambda: b" ready." in log.read_bytes() or worker.poll() is not None, 60,
                  "the celery worker")
            if worker.poll() is not None:
                return {"skipped": "the celery worker did not start: "
                                   + log.read_text(errors="replace")[-300:]}
            count = options.sender_functions
            _timed(tasks.plain_post, options.workers * 5)          # pools and paths warm
            _timed(tasks.resumable_post, options.workers * 5)
            time.sleep(STATS_FLUSH_WAIT)
            before = _xact_commits(db, journal_db)
            plain, resumable = [], []
            for _round in range(options.rounds):
                plain.append(_timed(tasks.plain_post, count))
                resumable.append(_timed(tasks.resumable_post, count))
            time.sleep(STATS_FLUSH_WAIT)
            after = _xact_commits(db, journal_db)
            tasks.journal.close()
            tasks.app.close()
            return {
                "tasks": count, "rounds": options.rounds, "concurrency": options.workers,
                "plain_per_s": statistics.median(plain),
                "resumable_per_s": statistics.median(resumable),
                "journal_xact_commits_per_task": (after - before) / (count * options.rounds),
            }
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, 9)
            worker.wait(10)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)
