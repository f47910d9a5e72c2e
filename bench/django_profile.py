"""``python -m bench.django_profile``: what a Django request costs, bare and certified, in process.

The grid's ``django-bare`` / ``django-certified`` rows (bench/django_app.py under gunicorn)
move with the neighbours' load; this drives the same Django project directly as a WSGI
callable, without HTTP, so only the server's own work is measured (issue 12). Both
handlers live in one process on one Django connection: Django is configured once with
``CertifiedMiddleware`` in ``MIDDLEWARE``, one ``WSGIHandler`` is built, then
``MIDDLEWARE`` is emptied and the bare handler is built (a handler reads the setting
only when it is made). Modes alternate in rounds so drift touches each alike.

Printed per mode: wall and process CPU (``time.process_time``: this process's Python and
driver) per request; the CPU of the PostgreSQL backend serving Django's connection
(``/proc/<pid>/stat`` of ``pg_backend_pid()``, same machine: on two cores the server's
CPU competes with the application's); and **round trips** per request, counted by the
server itself: for one extra pass ``log_statement = 'all'`` is set on the database and
the lines PostgreSQL logs are counted. psycopg2 sends every query (its own implicit
``BEGIN`` included) as one simple-protocol message, logged as one line, so a line is a
round trip. ``--statements`` prints the logged statements of one request per mode.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from bench.cluster import BenchDatabase
from bench.profile import drive, measure, medians, process_cpu_seconds

__all__ = ["main", "build_handlers", "round_trips"]

#: ``atomic``: the bare handler's view in ``transaction.atomic`` (``POST /items-atomic``),
#: what a project with ``ATOMIC_REQUESTS`` pays for a transaction without any chttp.
MODES = ("bare", "atomic", "certified", "replay")

App = Callable[..., Iterable[bytes]]


def build_handlers(db_url: str) -> dict[str, App]:
    """Configure Django on ``db_url`` and return ``{"bare": …, "certified": …}`` handlers."""
    import django
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    from bench.django_app import settings_for

    settings.configure(**settings_for("django-certified", db_url))
    django.setup()
    certified = WSGIHandler()
    settings.MIDDLEWARE = []
    bare = WSGIHandler()
    return {"bare": bare, "atomic": _at_path(bare, "/items-atomic"), "certified": certified,
            "replay": certified}


def _at_path(app: App, path: str) -> App:
    def at_path(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return app({**environ, "PATH_INFO": path}, start_response)

    return at_path


def _ids(mode: str, count: int, tag: str) -> list[str | None]:
    if mode in ("bare", "atomic"):
        return [None] * count
    if mode == "replay":
        return ["template"] * count
    return [f"{tag}-{n}" for n in range(count)]


def _backend_cpu() -> float:
    """CPU seconds the PostgreSQL backend of Django's connection has used so far."""
    from django.db import connection

    with connection.cursor() as cursor:  # psycopg2 or psycopg 3, whichever Django chose
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    return process_cpu_seconds(pid)


def _driver() -> str:
    """Django picks psycopg 3 whenever it is importable, psycopg2 otherwise."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if is_psycopg3:
        import psycopg

        return f"psycopg {psycopg.__version__}"
    import psycopg2

    return f"psycopg2 {psycopg2.__version__.split()[0]}"


def _prepares() -> bool:
    """Whether the certified handler's store runs prepared statements (CHTTP's
    ``PREPARED_STATEMENTS`` is on in bench/django_app.py; the store decides)."""
    from chttp_server import store_dbapi
    from chttp_server.django.connection import django_engine

    return store_dbapi.supports(django_engine("default")) and \
        store_dbapi.prepares(django_engine("default"))


def _close_django_connections() -> None:
    from django.db import connections

    connections.close_all()


def _logged(log: Path, start: int) -> list[str]:
    """The statements PostgreSQL logged after byte ``start`` of its log."""
    with log.open("rb") as handle:
        handle.seek(start)
        text = handle.read().decode("utf-8", "replace")
    return [line.split("LOG:  ", 1)[1] for line in text.splitlines()
            if "LOG:  statement: " in line or "LOG:  execute " in line]


def round_trips(db: BenchDatabase, apps: dict[str, App], modes: Iterable[str], count: int,
                *, show: bool = False) -> dict[str, float]:
    """Queries PostgreSQL received per request of each mode (see the module docstring)."""
    log = db.cluster.log
    db.execute(f"ALTER DATABASE {db.name} SET log_statement = 'all'")
    _close_django_connections()  # the setting applies to sessions opened after it
    counts: dict[str, float] = {}
    try:
        for mode in modes:
            drive(apps[mode], _ids(mode, 1, "warm-" + uuid.uuid4().hex[:8]))
            start = log.stat().st_size
            drive(apps[mode], _ids(mode, count, "rt-" + uuid.uuid4().hex[:8]))
            lines = _logged(log, start)
            counts[mode] = len(lines) / count
            if show:
                print(f"-- {mode}: the statements of one request")
                for line in lines[: round(counts[mode])]:
                    print("   ", line[:150])
    finally:
        db.execute(f"ALTER DATABASE {db.name} RESET log_statement")
        _close_django_connections()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.django_profile", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--cprofile", choices=MODES, default=None)
    parser.add_argument("--cprofile-lines", type=int, default=35)
    parser.add_argument("--statements", action="store_true",
                        help="print the statements PostgreSQL received for one request per mode")
    args = parser.parse_args(argv)
    with BenchDatabase() as db:
        apps = build_handlers(db.url)
        drive(apps["certified"], ["template"])
        drive(apps["bare"], [None] * 50)
        drive(apps["certified"], _ids("certified", 50, "warm"))
        samples: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in args.modes}
        for _round in range(args.rounds):
            for mode in args.modes:
                samples[mode].append(measure(
                    apps[mode], _ids(mode, args.requests, uuid.uuid4().hex[:8]), _backend_cpu))
        trips = round_trips(db, apps, args.modes, 100, show=args.statements)
        print(f"Django's driver: {_driver()}; the store prepares its statements: {_prepares()}")
        print(f"{'mode':<10} {'wall us/req':>12} {'cpu us/req':>11} {'pg cpu us/req':>14} "
              f"{'round trips':>12}  (median of {args.rounds} x {args.requests})")
        for mode in args.modes:
            wall, cpu, server = medians(samples[mode])
            print(f"{mode:<10} {wall:>12.0f} {cpu:>11.0f} {server:>14.0f} {trips[mode]:>12.2f}")
        if args.cprofile:
            profiler = cProfile.Profile()
            ids = _ids(args.cprofile, args.requests, "p-" + uuid.uuid4().hex[:8])
            profiler.enable()
            drive(apps[args.cprofile], ids)
            profiler.disable()
            for order in ("tottime", "cumulative"):
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(args.cprofile_lines)
                print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
