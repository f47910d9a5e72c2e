"""``python -m bench.asgi_profile``: what one FastAPI request costs, bare and certified.

The ASGI counterpart of ``python -m bench.profile``: the FastAPI app of the bench
(bench/fastapi_app.py, asyncpg) is called directly as an ASGI callable, one request at a
time on one event loop, ``--requests`` times per mode on a durable throwaway cluster,
modes alternating in rounds (``fastapi-floor``: the bare view writing one more row,
without chttp — any one-row design's best). Per request it prints the wall time, this process's CPU
time (the server's Python: FastAPI, SQLAlchemy's asyncio layer, asyncpg, the front
end), the PostgreSQL backends' CPU time, and the statements sent (each is one round trip
on asyncpg; ``BEGIN`` and ``COMMIT`` included). ``--cprofile MODE`` then prints the top
functions of that mode. On two cores the two CPU columns together are what a request
costs the machine once it is saturated: the bound on the ratios at 4 and 16 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import time
import uuid
from typing import Any

from sqlalchemy import event

from bench.cluster import BenchDatabase
from bench.load import BODY, PATH
from bench.profile import backend_cpu_seconds

__all__ = ["main", "drive"]

MODES = ("fastapi-bare", "fastapi-floor", "fastapi-certified")


def _scope(message_id: str | None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"content-length", str(len(BODY)).encode())]
    if message_id is not None:
        headers.append((b"x-message-id", message_id.encode()))
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": PATH, "raw_path": PATH.encode(),
            "root_path": "", "query_string": b"", "headers": headers,
            "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000)}


async def drive(app: Any, ids: list[str | None]) -> tuple[int, float, float]:
    """Call ``app`` once per id; return (requests, wall seconds, process CPU seconds)."""
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY.encode(), "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    wall, cpu = time.perf_counter(), time.process_time()
    for message_id in ids:
        await app(_scope(message_id), receive, send)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    bad = [status for status in statuses if status != 201]
    if bad:
        raise RuntimeError(f"{len(bad)} failed requests, e.g. {bad[0]}")
    return len(ids), wall, cpu


def _ids(mode: str, count: int) -> list[str | None]:
    if mode == "fastapi-bare":
        return [None] * count
    tag = uuid.uuid4().hex[:8]
    return [f"{tag}-{n}" for n in range(count)]


async def _run(args: argparse.Namespace, db: BenchDatabase) -> None:
    from bench.fastapi_app import make_app

    apps = {mode: make_app(mode, db.url, pool_size=2) for mode in MODES}
    statements = {mode: 0 for mode in MODES}
    for mode, app in apps.items():
        # The middleware stack is built on the first call; the engine is the view's.
        await drive(app, _ids(mode, 50))
    engines = _engines(apps)
    for mode, engine in engines.items():
        def count(*_args: Any, mode: str = mode) -> None:
            statements[mode] += 1
        event.listen(engine.sync_engine, "before_cursor_execute", count)
        event.listen(engine.sync_engine, "begin", count)
        event.listen(engine.sync_engine, "commit", count)
    samples: dict[str, list[tuple[float, float, float, float]]] = {mode: [] for mode in MODES}
    for _round in range(args.rounds):
        for mode in MODES:
            statements[mode] = 0
            before = backend_cpu_seconds(db)
            n, wall, cpu = await drive(apps[mode], _ids(mode, args.requests))
            database = backend_cpu_seconds(db) - before
            samples[mode].append((wall / n * 1e6, cpu / n * 1e6, database / n * 1e6,
                                  statements[mode] / n))
    print(f"{'mode':<18} {'wall us/req':>12} {'cpu us/req':>11} {'postgres cpu':>13} "
          f"{'statements':>11}  (median of {args.rounds})")
    for mode in MODES:
        columns = [statistics.median(column) for column in zip(*samples[mode])]
        print(f"{mode:<18} {columns[0]:>12.0f} {columns[1]:>11.0f} {columns[2]:>13.0f} "
              f"{columns[3]:>11.1f}")
    if args.cprofile:
        profiler = cProfile.Profile()
        ids = _ids(args.cprofile, args.requests)
        profiler.enable()
        await drive(apps[args.cprofile], ids)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        print(out.getvalue())
    for engine in engines.values():
        await engine.dispose()


def _engines(apps: dict[str, Any]) -> dict[str, Any]:
    """Each app's AsyncEngine, found through its view's closure (bench/fastapi_app.py)."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    found: dict[str, Any] = {}
    for mode, app in apps.items():
        for route in app.routes:
            closure = getattr(getattr(route, "endpoint", None), "__closure__", None) or ()
            for cell in closure:
                maker = cell.cell_contents
                bind = getattr(maker, "kw", {}).get("bind")
                if isinstance(bind, AsyncEngine):
                    found[mode] = bind
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.asgi_profile", description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cprofile", choices=MODES, default=None)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    with BenchDatabase() as db:
        asyncio.run(_run(args, db))
    return 0


if __name__ == "__main__":
    sys.exit(main())
