"""``python -m bench.bytecodes``: the Python a request runs, counted, not timed.

CPU time per request moves with whatever else the machine runs (issue 20 saw the same
in-process figure move by 15 % between two runs minutes apart). What a request *executes*
does not: this drives the bench application (bench/app.py) in process, as
``python -m bench.profile`` does, under a tracer that counts every bytecode instruction
the interpreter runs, and prints the count per request by module (``--top`` adds the
busiest functions). Certified minus bare, for modules other than SQLAlchemy's (the same
in both: the application's connection checkout, execute, commit and close), is the
receiver's own Python, counted the same way on any machine; two runs of one tree agree
to within a few instructions per request (dictionary resizes, a garbage collection).

A count is not a duration: a bytecode that calls into C (the driver, ``hashlib``) counts
once however long it runs, and kernel time is not in it. It is the measure of "fewer
layers, fewer calls"; ``bench.profile`` stays the measure of time.
"""

from __future__ import annotations

import argparse
import collections
import sys
import sysconfig
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterable

from bench.cluster import BenchDatabase
from bench.profile import drive, request_ids, warmed_apps

__all__ = ["count", "by_module", "warmed_flask_apps", "main"]

_ROOT = str(Path(__file__).resolve().parent.parent)
_STDLIB = sysconfig.get_paths()["stdlib"]


def count(app: Callable[..., Iterable[bytes]], ids: list[str | None]) -> collections.Counter[tuple[str, str]]:
    """Bytecodes executed per ``(file, function)`` while ``app`` answers one request per id."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def tracer(frame: FrameType, event: str, _arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            code = frame.f_code
            counts[(code.co_filename, code.co_name)] += 1
        return tracer

    sys.settrace(tracer)
    try:
        drive(app, ids)
    finally:
        sys.settrace(None)
    return counts


def module_of(filename: str) -> str:
    """A file as the report names it: SQLAlchemy by subpackage, the rest by path."""
    name = filename.split("site-packages/")[-1]
    for root in (_ROOT, _STDLIB):
        name = name.removeprefix(root + "/")
    if name.startswith("sqlalchemy/"):
        name = "/".join(name.split("/")[:2])
    return name


def by_module(counts: collections.Counter[tuple[str, str]], requests: int) -> dict[str, float]:
    """Bytecodes per request, summed by :func:`module_of`, largest first."""
    totals: collections.Counter[str] = collections.Counter()
    for (filename, _function), executed in counts.items():
        totals[module_of(filename)] += executed
    return {module: executed / requests for module, executed in totals.most_common()}


def warmed_flask_apps(db_url: str) -> dict[str, Callable[..., Iterable[bytes]]]:
    """:func:`bench.profile.warmed_apps` for the Flask twin: ``bare``, ``certified``
    and ``replay`` (a stored ``template``), each having answered a first request."""
    from bench.flask_app import make_app

    apps = {"bare": make_app("flask-bare", db_url), "certified": make_app("flask-certified", db_url)}
    apps["replay"] = apps["certified"]
    drive(apps["certified"], ["template"])
    drive(apps["bare"], [None] * 50)
    return apps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bytecodes", description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--modes", nargs="+", default=None,
                        choices=["bare", "minimal", "certified", "certified-default", "replay"],
                        help="default: bare, minimal (the bound of bench/minimal_certified.py: "
                             "not with --app flask), certified, replay")
    parser.add_argument("--top", type=int, default=0, help="also the N busiest functions")
    parser.add_argument("--app", choices=["wsgi", "flask"], default="wsgi",
                        help="the bench application (bench/app.py) or its Flask twin "
                             "(bench/flask_app.py: Flask-SQLAlchemy's session, "
                             "chttp_server.flask.Certified)")
    args = parser.parse_args(argv)
    if args.modes is None:
        args.modes = ["bare", "certified", "replay"] if args.app == "flask" else \
            ["bare", "minimal", "certified", "replay"]
    with BenchDatabase() as db:
        apps = warmed_apps(db.url) if args.app == "wsgi" else warmed_flask_apps(db.url)
        if not set(args.modes) <= set(apps):
            parser.error(f"--app {args.app} has the modes {', '.join(sorted(apps))}")
        results: dict[str, dict[str, float]] = {}
        for mode in args.modes:
            drive(apps[mode], request_ids(mode, 20))  # warm: pools filled, statements prepared
            counts = count(apps[mode], request_ids(mode, args.requests))
            results[mode] = by_module(counts, args.requests)
            if args.top:
                print(f"-- {mode}: busiest functions (bytecodes per request)")
                for (filename, function), executed in counts.most_common(args.top):
                    print(f"{executed / args.requests:>9.0f}  {module_of(filename)}:{function}")
    print(f"{'module':<44}" + "".join(f"{mode:>18}" for mode in args.modes))
    modules = sorted({m for r in results.values() for m in r},
                     key=lambda m: -max(r.get(m, 0.0) for r in results.values()))
    for module in modules:
        print(f"{module[:44]:<44}" + "".join(f"{results[mode].get(module, 0.0):>18.0f}"
                                            for mode in args.modes))
    print(f"{'total':<44}" + "".join(f"{sum(results[mode].values()):>18.0f}"
                                     for mode in args.modes))
    if "bare" in results:
        for mode in args.modes:
            if mode == "bare":
                continue
            own = sum(v for m, v in results[mode].items() if not m.startswith("sqlalchemy"))
            bare = sum(v for m, v in results["bare"].items() if not m.startswith("sqlalchemy"))
            what = ("the bound (bench/minimal_certified.py): its Python" if mode == "minimal"
                    else "the receiver's own Python")
            print(f"{mode}: {what} (outside SQLAlchemy, minus bare's): "
                  f"{own - bare:.0f} bytecodes per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
