"""The scenarios of issue 5, run side by side on one database in one process.

At each concurrency the floor, bare, certified, replay and peer rows run back to back
(servers all booted beforehand), so slow drift of a shared machine touches every row of
a concurrency alike. Then the scale runs (10 thousand vs 1 million stored messages), the
purge run, the sender runs (one caller; and async, many at once on one loop). Each step records what it measured, or why it did not.
"""

from __future__ import annotations

import http.client
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

from bench.cluster import BenchDatabase, DatabaseSettings
from bench.floor import pgbench_floor, pgbench_script
from bench.load import (BODY, PATH, TRANSFER_PATH, LoadResult, LoadSpec, combined, median_result,
                        run_load)
from bench.repeat import Load, machine_load
from bench.servers import Server

__all__ = ["Options", "Results", "run_all", "TEMPLATE_ID", "DJANGO_MODES", "FLASK_MODES",
           "FASTAPI_MODES", "ROW_GROUPS", "row_group"]

TEMPLATE_ID = "template-0"

#: The Django project's two dresses (bench/django_app.py), next to the raw WSGI rows.
DJANGO_MODES = ("django-bare", "django-certified")
#: The Flask + Flask-SQLAlchemy app's two dresses (bench/flask_app.py).
FLASK_MODES = ("flask-bare", "flask-certified")
#: The FastAPI app's dresses (bench/fastapi_app.py), served by uvicorn over asyncpg; the
#: floor writes one more row in the view's transaction, without chttp.
FASTAPI_MODES = ("fastapi-bare", "fastapi-certified", "fastapi-floor")
#: The Django bare view under ``transaction.atomic`` (bench/django_app.py's ``items_atomic``).
DJANGO_ATOMIC_PATH = "/items-atomic"
#: The framework rows: mode prefix -> (the modules they need, the install hint).
_FRAMEWORKS = {"django": (("django",), "pip install Django"),
               "flask": (("flask_sqlalchemy",), "pip install Flask Flask-SQLAlchemy"),
               "fastapi": (("fastapi", "uvicorn", "asyncpg"), "pip install fastapi uvicorn asyncpg")}

#: The groups of grid rows ``--rows`` selects: the database's own (pgbench) rows, the raw
#: WSGI middleware's (bare, certified, replay, /transfer), idemkit's, and each framework's.
ROW_GROUPS = ("floor", "wsgi", "peer", "django", "flask", "fastapi")


def row_group(mode: str) -> str:
    """The :data:`ROW_GROUPS` entry a server mode belongs to."""
    prefix = mode.split("-", 1)[0]
    return prefix if prefix in _FRAMEWORKS or prefix == "peer" else "wsgi"


def _framework_missing(mode: str) -> str:
    """Why ``mode``'s framework cannot run here, or ``""`` (the raw WSGI modes need none)."""
    framework = mode.split("-", 1)[0]
    if framework not in _FRAMEWORKS:
        return ""
    modules, hint = _FRAMEWORKS[framework]
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed ({hint})"
    return ""


@dataclass(frozen=True)
class Options:
    duration: float = 6.0                          # seconds per measured cell, all rounds
    rounds: int = 3                                # interleaved rounds per cell (median)
    concurrencies: tuple[int, ...] = (1, 4, 16)
    scale_concurrencies: tuple[int, ...] = (1, 4)
    scale_small: int = 10_000
    scale_large: int = 1_000_000
    purge_rows: int = 1_000_000
    purge_share: float = 0.2                       # the paced purge's share of the time
    workers: int = 4
    threads: int = 4
    use_wrk: bool = True
    sender_functions: int = 200                    # resumable functions in the sender run
    sender_concurrency: int = 16                   # async sender: functions in flight
    only: frozenset[str] = frozenset()             # empty: every scenario
    rows: frozenset[str] = frozenset()             # grid row groups (ROW_GROUPS); empty: all
    json_path: str | None = None                   # where to write the results as JSON
    png_path: str | None = None                    # where to draw them (matplotlib PNG)
    repeat: int = 1                                # whole runs (--repeat): median + spread


@dataclass
class Results:
    settings: DatabaseSettings | None = None
    grid: dict[tuple[str, int], LoadResult] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    scale: dict[tuple[str, int, int], LoadResult] = field(default_factory=dict)
    purge: dict[str, object] = field(default_factory=dict)
    purge_paced: dict[str, object] = field(default_factory=dict)
    sender: dict[str, object] = field(default_factory=dict)
    async_sender: dict[str, object] = field(default_factory=dict)
    celery: dict[str, object] = field(default_factory=dict)
    takeover: dict[str, object] = field(default_factory=dict)
    tool: str = ""
    load_before: Load | None = None                # the machine's load average, bench.repeat
    load_after: Load | None = None


def short_reason(error: BaseException) -> str:
    """The first line of ``error`` and the last line of any log it carries."""
    text = str(error).strip().splitlines()
    log = getattr(error, "log", "").strip().splitlines()
    last = next((line for line in reversed(log) if "Error" in line), log[-1] if log else "")
    return "; ".join(part for part in (text[0] if text else type(error).__name__, last) if part)


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _post(address: str, message_id: str) -> int:
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", PATH, body=BODY, headers={
            "Content-Type": "application/json", "X-Message-ID": message_id})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def run_all(options: Options) -> Results:
    results = Results(load_before=machine_load())
    try:
        return _run_all(options, results)
    finally:
        results.load_after = machine_load()


def _run_all(options: Options, results: Results) -> Results:
    wanted = (lambda name: not options.only or name in options.only)
    progress("starting a durable PostgreSQL cluster (fsync and synchronous_commit on)")
    with BenchDatabase() as db:
        results.settings = db.settings()
        try:
            db.init_peer_schema()
            peer_ready = ""
        except Exception as exc:  # the peer is optional: say exactly why it is missing
            peer_ready = f"idemkit unavailable: {type(exc).__name__}: {exc}"
        servers: dict[str, Server] = {}
        # The grid, scale and purge runs share these servers; the sender runs boot their own
        # receiver, so a selection of sender rows alone boots none of them.
        http_rows = wanted("grid") or wanted("scale") or wanted("purge")
        try:
            for mode in ("bare", "certified", "certified-default", "peer", *DJANGO_MODES,
                         *FLASK_MODES, *FASTAPI_MODES):
                if not http_rows or (options.rows and row_group(mode) not in options.rows):
                    continue
                if mode == "peer" and peer_ready:
                    results.skipped["peer"] = peer_ready
                    continue
                if _framework_missing(mode):
                    results.skipped[mode.split("-", 1)[0]] = _framework_missing(mode)
                    continue
                serving = ("uvicorn" if mode in FASTAPI_MODES else
                           f"gunicorn, {options.threads} threads each")
                progress(f"booting {mode}: {options.workers} workers ({serving}); waiting "
                         "for every worker")
                try:
                    servers[mode] = Server(mode, db.url, workers=options.workers,
                                           threads=options.threads).__enter__()
                except Exception as exc:
                    if mode not in ("peer", *DJANGO_MODES, *FLASK_MODES, *FASTAPI_MODES):
                        raise
                    group = mode.split("-", 1)[0]
                    results.skipped[group] = f"{mode} server failed: {short_reason(exc)}"
            _warm_up(servers, options)
            # The replay, scale and purge runs need the WSGI certified server and the
            # stored messages it answers; a --rows selection without it skips them.
            wsgi = "certified" in servers
            if wsgi:
                status = _post(servers["certified"].address, TEMPLATE_ID)
                if status != 201:
                    raise RuntimeError(f"the template certified request answered {status}")
                db.copy_messages(template_id=TEMPLATE_ID, prefix="r-", start=0,
                                 stop=options.scale_small)
            if wanted("grid"):
                _grid(db, servers, options, results)
            if wanted("scale") and wsgi:
                _scale(db, servers, options, results)
            if wanted("purge") and wsgi:
                _purge(db, servers, options, results)
        finally:
            for server in servers.values():
                server.__exit__(None, None, None)
        results.tool = " + ".join(sorted(_TOOLS))
        if wanted("sender"):
            from bench.sender import run_sender

            progress("sender: resumable functions with 10 persist() steps + one certified send")
            try:
                results.sender = run_sender(db, options)
            except Exception as exc:  # report the failure, keep the other figures
                results.sender = {"skipped": f"sender run failed: {type(exc).__name__}: {exc}"}
        if wanted("async-sender"):
            from bench.async_sender import run_async_sender

            progress(f"async sender: async def resumable functions, {options.sender_concurrency}"
                     " at once under one gather, then DBOS async workflows alike")
            try:
                results.async_sender = run_async_sender(db, options)
            except Exception as exc:  # report the failure, keep the other figures
                results.async_sender = {
                    "skipped": f"async sender run failed: {type(exc).__name__}: {exc}"}
        if wanted("celery"):
            from bench.celery_run import run_celery

            progress("celery: a task making one POST, plain and resumable, one prefork worker")
            try:
                results.celery = run_celery(db, options)
            except Exception as exc:  # report the failure, keep the other figures
                results.celery = {"skipped": f"celery run failed: {type(exc).__name__}: {exc}"}
        if wanted("takeover"):
            from bench.takeover import run_takeover

            progress("takeover: sender workers SIGKILLed on one host, resumed from another")
            try:
                results.takeover = run_takeover(db, options)
            except Exception as exc:  # report the failure, keep the other figures
                results.takeover = {"skipped": f"takeover run failed: {type(exc).__name__}: {exc}"}
    return results


def _slice(options: Options) -> float:
    return max(1.0, options.duration / max(1, options.rounds))


def _load(options: Options, server: Server, concurrency: int, **spec: object) -> LoadResult:
    result = run_load(LoadSpec(address=server.address, concurrency=concurrency,
                             duration=_slice(options), **spec),  # type: ignore[arg-type]
                    use_wrk=options.use_wrk)
    _TOOLS.add(result.tool)
    return result


#: Which load generators produced the HTTP figures (wrk, or the labelled fallback).
_TOOLS: set[str] = set()


def _warm_up(servers: dict[str, Server], options: Options) -> None:
    """One second of load per server: pools opened, code paths hot, before any figure."""
    warm = Options(duration=1.0, rounds=1, use_wrk=options.use_wrk)
    for mode, server in servers.items():
        header = "Idempotency-Key" if mode == "peer" else "X-Message-ID"
        _load(warm, server, 4, kind="none" if mode.endswith("bare") else "new", header=header)


def _run_of(options: Options, server: Server, kind: str) -> Callable[[int], LoadResult]:
    """One row's run at a given concurrency, bound to its server now (not at call time)."""
    return lambda concurrency: _load(options, server, concurrency, kind=kind)


def _grid(db: BenchDatabase, servers: dict[str, Server], options: Options,
          results: Results) -> None:
    runs: list[tuple[str, Callable[[int], LoadResult]]] = []
    if not options.rows or "floor" in options.rows:
        runs += [
            ("floor (pgbench)", lambda c: pgbench_floor(port=db.port, database=db.name,
                                                        concurrency=c, duration=_slice(options))),
            # The SQL of a bare and of a certified request alone (bench/floor.py): the
            # ratio the database allows before any Python runs.
            ("bare sql (pgbench)", lambda c: pgbench_script(
                "bare", port=db.port, database=db.name, concurrency=c,
                duration=_slice(options))),
            ("certified sql (pgbench)", lambda c: pgbench_script(
                "certified", port=db.port, database=db.name, concurrency=c,
                duration=_slice(options))),
            ("advisory sql (pgbench)", lambda c: pgbench_script(
                "advisory", port=db.port, database=db.name, concurrency=c,
                duration=_slice(options))),
        ]
    if "bare" in servers and "certified" in servers:
        runs += [
            ("bare", lambda c: _load(options, servers["bare"], c, kind="none")),
            ("certified", lambda c: _load(options, servers["certified"], c, kind="new")),
            ("certified, default settings", lambda c: _load(
                options, servers["certified-default"], c, kind="new")),
            ("replay", lambda c: _load(options, servers["certified"], c, kind="replay",
                                       replay_ids=options.scale_small)),
        ]
    if "peer" in servers:
        runs.append(("peer (idemkit)", lambda c: _load(options, servers["peer"], c,
                                                       kind="new", header="Idempotency-Key")))
    # The realistic handler (issue 12): lock, update, log, read back, on the same servers.
    if "bare" in servers and "certified" in servers:
        runs.append(("bare /transfer", lambda c: _load(options, servers["bare"], c,
                                                       kind="none", path=TRANSFER_PATH)))
        runs.append(("certified /transfer", lambda c: _load(options, servers["certified"], c,
                                                            kind="new", path=TRANSFER_PATH)))
    if "peer" in servers:
        runs.append(("peer /transfer", lambda c: _load(options, servers["peer"], c, kind="new",
                                                       header="Idempotency-Key",
                                                       path=TRANSFER_PATH)))
    for framework in ("django", "flask", "fastapi"):
        bare_mode, certified_mode = f"{framework}-bare", f"{framework}-certified"
        if bare_mode in servers and certified_mode in servers:
            runs.append((f"{framework} bare", _run_of(options, servers[bare_mode], "none")))
            runs.append((f"{framework} certified",
                         _run_of(options, servers[certified_mode], "new")))
    if "django-bare" in servers:
        # The bare view in a transaction of its own (ATOMIC_REQUESTS' BEGIN, INSERT, COMMIT):
        # a certified request needs one, so this is the bound on Django certified / bare.
        runs.append(("django atomic", lambda c: _load(options, servers["django-bare"], c,
                                                      kind="none", path=DJANGO_ATOMIC_PATH)))
    if "fastapi-floor" in servers:
        runs.append(("fastapi +1 insert", _run_of(options, servers["fastapi-floor"], "new")))
    # Each cell is measured in `rounds` slices, the scenarios interleaved round by round,
    # and reported as the median: other load on a shared machine then hits every row of
    # a concurrency alike instead of whichever happened to run during it.
    for concurrency in options.concurrencies:
        slices: dict[str, list[LoadResult]] = {name: [] for name, _run in runs}
        for round_number in range(options.rounds):
            progress(f"concurrency {concurrency}, round {round_number + 1}/{options.rounds}: "
                     + ", ".join(name for name, _run in runs))
            for name, run in runs:
                slices[name].append(run(concurrency))
        for name, measured in slices.items():
            results.grid[(name, concurrency)] = median_result(measured)


def _scale(db: BenchDatabase, servers: dict[str, Server], options: Options,
           results: Results) -> None:
    certified = servers["certified"]
    for stored in (options.scale_small, options.scale_large):
        progress(f"scale: loading {stored:,} stored messages")
        if stored == options.scale_small:
            db.delete_messages_except(TEMPLATE_ID)
        db.copy_messages(template_id=TEMPLATE_ID, prefix="r-", start=0, stop=stored)
        actual = db.message_count()
        for concurrency in options.scale_concurrencies:
            progress(f"scale: claim and replay at {actual:,} rows, concurrency {concurrency}")
            claims: list[LoadResult] = []
            replays: list[LoadResult] = []
            for _round in range(options.rounds):
                claims.append(_load(options, certified, concurrency, kind="new"))
                replays.append(_load(options, certified, concurrency, kind="replay",
                                     replay_ids=stored))
            results.scale[("claim", stored, concurrency)] = median_result(claims)
            results.scale[("replay", stored, concurrency)] = median_result(replays)


def _purge(db: BenchDatabase, servers: dict[str, Server], options: Options,
           results: Results) -> None:
    """The purge twice: flat out, then paced by its own batch times (``share=``)."""
    results.purge = _purge_once(db, servers, options, share=None)
    if options.purge_share > 0:
        results.purge_paced = _purge_once(db, servers, options, share=options.purge_share)


def _purge_once(db: BenchDatabase, servers: dict[str, Server], options: Options, *,
                share: float | None) -> dict[str, object]:
    """Live certified traffic before the purge, then for the purge's *whole* run.

    The "during" figure is made of load slices repeated until the purge ends, so it
    covers the purge from its first batch to its last: a window shorter than the purge
    would flatter a purge whose cost grows, and a longer one would dilute it.
    """
    from chttp_core.db import make_engine
    from chttp_server.store import MessageStore

    concurrency = 4
    progress(f"purge: loading {options.purge_rows:,} expired messages")
    db.copy_messages(template_id=TEMPLATE_ID, prefix="x-", start=0, stop=options.purge_rows,
                     expired=True)
    progress("purge: live certified traffic before the purge")
    window = Options(duration=options.duration, rounds=1, use_wrk=options.use_wrk)
    before = _load(window, servers["certified"], concurrency, kind="new")
    engine = make_engine(db.url)
    store = MessageStore(engine, retention=timedelta(days=15), claim_timeout=5.0)
    outcome: dict[str, float] = {}

    def purge() -> None:
        began = time.monotonic()
        outcome["deleted"] = store.purge(share=share)
        outcome["seconds"] = time.monotonic() - began

    paced = f"share={share:g}" if share is not None else "flat out"
    progress(f"purge: MessageStore.purge({paced}) while the same traffic runs, until it ends")
    thread = threading.Thread(target=purge)
    slice_options = Options(duration=min(options.duration, 2.0), rounds=1, use_wrk=options.use_wrk)
    began = time.monotonic()
    thread.start()
    slices = [_load(slice_options, servers["certified"], concurrency, kind="new")]
    while thread.is_alive():
        slices.append(_load(slice_options, servers["certified"], concurrency, kind="new"))
    window_seconds = time.monotonic() - began
    thread.join()
    engine.dispose()
    return {"before": before, "during": combined(slices), "concurrency": concurrency,
            "deleted": int(outcome.get("deleted", 0)), "share": share,
            "purge_seconds": outcome.get("seconds", float("nan")),
            "window_seconds": window_seconds}
