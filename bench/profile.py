"""``python -m bench.profile``: the CPU cost of one request, in process, without HTTP.

HTTP figures on a shared two-core machine move with the neighbours' load; what a
request costs the server's own process does not move as much. This drives the bench
application (bench/app.py) directly as a WSGI callable, ``--requests`` times per mode,
on a durable throwaway cluster, and prints per-request wall and process CPU time
(``time.process_time``: the server's Python, not PostgreSQL's) and, with ``--cprofile``,
the top functions and the same profile summed by module (:func:`by_module`: where the
receiver's own Python goes, next to SQLAlchemy's and the driver's). Modes alternate in rounds so drift touches each alike.

It also prints what each request cost PostgreSQL: the CPU time of the server's client
backends (``/proc/<pid>/stat``, same machine), per request. On two cores shared by the
server, PostgreSQL and the load generator, the two CPU columns together are what a
request costs once the machine is saturated: the bound on the ratios at 4 and 16 clients.
``certified`` prepares the store's statements (``prepared_statements=True``, as the
bench's certified server does); ``certified-default`` runs the middleware's defaults;
``minimal`` is the bound of :mod:`bench.minimal_certified`: the same SQL as
``certified`` with the least Python, so certified minus minimal is what the receiver's
own layers cost.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import sysconfig
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from bench.cluster import BenchDatabase
from bench.load import BODY, PATH

__all__ = ["main", "drive", "measure", "medians", "process_cpu_seconds", "backend_cpu_seconds",
           "by_module", "warmed_apps", "request_ids"]


_PATHS = {"items": PATH, "transfer": "/transfer"}
_path = PATH


def _environ(message_id: str | None) -> dict[str, Any]:
    body = BODY.encode()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST", "PATH_INFO": _path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
    }
    if message_id is not None:
        environ["HTTP_X_MESSAGE_ID"] = message_id
    return environ


def drive(app: Callable[..., Iterable[bytes]], ids: Iterable[str | None]) -> tuple[int, float, float]:
    """Call ``app`` once per id; return (requests, wall seconds, process CPU seconds)."""
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    wall, cpu = time.perf_counter(), time.process_time()
    count = 0
    for message_id in ids:
        for _chunk in app(_environ(message_id), start_response):
            pass
        count += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    bad = [s for s in statuses if not s.startswith(("200", "201"))]
    if bad:
        raise RuntimeError(f"{len(bad)} failed requests, e.g. {bad[0]}")
    return count, wall, cpu


def measure(app: Callable[..., Iterable[bytes]], ids: Iterable[str | None],
            database_cpu: Callable[[], float]) -> tuple[float, float, float]:
    """Drive ``app`` once per id: (wall, process CPU, database CPU) in µs per request."""
    before = database_cpu()
    count, wall, cpu = drive(app, ids)
    database = database_cpu() - before
    return wall / count * 1e6, cpu / count * 1e6, database / count * 1e6


def medians(samples: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The median of each column of :func:`measure`'s rounds."""
    wall, cpu, database = zip(*samples)
    return statistics.median(wall), statistics.median(cpu), statistics.median(database)


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` of this machine has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu_seconds(db: BenchDatabase) -> float:
    """CPU seconds used so far by the bench database's client backends (but this one)."""
    total = 0.0
    for pid in db.scalar("SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = "
                         "current_database() AND backend_type = 'client backend' "
                         "AND pid <> pg_backend_pid()") or []:
        try:
            total += process_cpu_seconds(pid)
        except FileNotFoundError:  # a backend that has just exited
            continue
    return total


def by_module(stats: pstats.Stats, requests: int) -> list[tuple[str, float, float]]:
    """A profile's own time summed by module: (module, µs per request, calls per request),
    largest first. SQLAlchemy counts as its subpackages (``sqlalchemy/engine``, ...); a C
    function is named as cProfile names it (``{method 'execute' ...}``: the driver's
    time, waits on the server included). cProfile's own overhead inflates every figure
    alike: compare the rows, not the total, with the unprofiled CPU column."""
    totals: dict[str, list[float]] = {}
    for (filename, _line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        calls, own = entry[1], entry[2]
        if filename == "~":
            module = function
        else:
            module = filename.split("site-packages/")[-1]
            for root in (str(Path(__file__).resolve().parent.parent), sysconfig.get_paths()["stdlib"]):
                module = module.removeprefix(root + "/")
            if module.startswith("sqlalchemy/"):
                module = "/".join(module.split("/")[:2])
        total = totals.setdefault(module, [0.0, 0.0])
        total[0] += own
        total[1] += calls
    rows = [(module, own / requests * 1e6, calls / requests)
            for module, (own, calls) in totals.items()]
    return sorted(rows, key=lambda row: row[1], reverse=True)


def warmed_apps(db_url: str) -> dict[str, Callable[..., Iterable[bytes]]]:
    """The application in each mode (``replay``: the certified one, whose message
    ``template`` is stored for it to replay; ``minimal``: the bound of
    :mod:`bench.minimal_certified`), each having answered a first request."""
    from bench import minimal_certified
    from bench.app import make_app

    apps = {mode: make_app(mode, db_url) for mode in ("bare", "certified", "certified-default")}
    apps["replay"] = apps["certified"]
    apps["minimal"] = minimal_certified.make_app(db_url)
    drive(apps["certified"], ["template"])
    drive(apps["certified-default"], ["template-default"])
    drive(apps["minimal"], request_ids("minimal", 1))
    drive(apps["bare"], [None] * 50)
    return apps


def request_ids(mode: str, requests: int) -> list[str | None]:
    """The message ids of ``requests`` requests in ``mode``: none (bare), the stored
    ``template`` again and again (replay), or fresh ones (a certified mode)."""
    if mode == "bare":
        return [None] * requests
    if mode == "replay":
        return ["template"] * requests
    tag = uuid.uuid4().hex[:8]
    return [f"{tag}-{n}" for n in range(requests)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    modes = ["bare", "minimal", "certified", "certified-default", "replay"]
    parser.add_argument("--modes", nargs="+", choices=modes, default=modes)
    parser.add_argument("--cprofile", choices=modes, default=None)
    parser.add_argument("--scenario", choices=sorted(_PATHS), default="items")
    args = parser.parse_args(argv)
    global _path
    _path = _PATHS[args.scenario]
    with BenchDatabase() as db:
        apps = warmed_apps(db.url)
        samples: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in args.modes}
        for _round in range(args.rounds):
            for mode in args.modes:
                samples[mode].append(measure(apps[mode], request_ids(mode, args.requests),
                                             lambda: backend_cpu_seconds(db)))
        print(f"{'mode':<18} {'wall us/req':>12} {'cpu us/req':>11} {'postgres cpu':>13}  "
              f"(median of {args.rounds})")
        for mode in args.modes:
            wall, cpu, database = medians(samples[mode])
            print(f"{mode:<18} {wall:>12.0f} {cpu:>11.0f} {database:>13.0f}")
        if {"bare", "minimal", "certified"} <= set(args.modes):
            cpu_of = {mode: medians(samples[mode])[1] for mode in ("bare", "minimal", "certified")}
            print(f"CPU added to a bare request: certified {cpu_of['certified'] - cpu_of['bare']:.0f}"
                  f" us; the bound with the same SQL and the least Python (minimal, "
                  f"bench/minimal_certified.py) {cpu_of['minimal'] - cpu_of['bare']:.0f} us")
        if args.cprofile:
            mode = args.cprofile
            ids = request_ids(mode, args.requests)
            profiler = cProfile.Profile()
            profiler.enable()
            drive(apps[mode], ids)
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(30)
            print(out.getvalue())
            print(f"{'own time by module (profiled)':<60} {'us/req':>8} {'calls/req':>10}")
            for module, micros, calls in by_module(stats, args.requests)[:25]:
                print(f"{module[:60]:<60} {micros:>8.1f} {calls:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
