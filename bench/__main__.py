"""``python -m bench``: run every scenario and print the table (``--help`` for options)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from bench.load import WRK_INSTALL_HINT, wrk_available
from bench.repeat import render_repeats, run_ratios, settle, summarise_runs
from bench.report import render
from bench.scenarios import ROW_GROUPS, Options, run_all

__all__ = ["main"]

SCENARIOS = ("grid", "scale", "purge", "sender", "async-sender", "celery", "takeover")


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per measured cell, split over the rounds (default 6; 1 with "
                             "--quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a fast pass: 1 s runs, concurrency 1 and 4, 10k vs 100k rows")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds per cell, reported as the median (default 3)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run the whole selection N times and print every ratio's median "
                             "and spread over the runs, with each run's load average "
                             "(default 1)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None,
                        help="client concurrencies (default 1 4 16)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--threads", type=int, default=4,
                        help="gthread threads per worker (default 4)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=None,
                        help="run only these scenario groups")
    parser.add_argument("--rows", nargs="+", choices=ROW_GROUPS, default=None,
                        help="run only these groups of grid rows (e.g. --only grid --rows "
                             "fastapi: FastAPI bare and certified only); scale and purge need "
                             "the 'wsgi' group")
    parser.add_argument("--sender-concurrency", type=int, default=16, metavar="N",
                        help="async-sender: functions in flight at once under one gather "
                             "(default 16)")
    parser.add_argument("--python-load", action="store_true",
                        help="use the Python load generator even if wrk is installed")
    parser.add_argument("--purge-share", type=float, default=0.2, metavar="FRACTION",
                        help="the paced purge run's share of the time spent deleting, each "
                             "pause scaled from the batch before it (MessageStore.purge("
                             "share=…); default 0.2; 0: only the flat-out purge)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the results as JSON (e.g. docs/bench.json)")
    parser.add_argument("--png", default=None, metavar="PATH",
                        help="also draw them with matplotlib (e.g. docs/bench.png)")
    args = parser.parse_args(argv)
    quick = args.quick
    return Options(
        duration=args.duration if args.duration is not None else (1.0 if quick else 6.0),
        concurrencies=tuple(args.concurrency or ((1, 4) if quick else (1, 4, 16))),
        scale_small=10_000,
        scale_large=100_000 if quick else 1_000_000,
        purge_rows=100_000 if quick else 1_000_000,
        purge_share=min(1.0, max(0.0, args.purge_share)),
        rounds=1 if quick else max(1, args.rounds),
        workers=args.workers,
        threads=args.threads,
        use_wrk=not args.python_load,
        sender_functions=20 if quick else 200,
        sender_concurrency=max(1, args.sender_concurrency),
        only=frozenset(args.only or ()),
        rows=frozenset(args.rows or ()),
        json_path=args.json,
        png_path=args.png,
        repeat=max(1, args.repeat),
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.use_wrk and not wrk_available():
        print(f"{WRK_INSTALL_HINT}; falling back to the Python load generator "
              "(rows are labelled; its own overhead caps the HTTP figures)", file=sys.stderr)
    runs = []
    for number in range(1, options.repeat + 1):
        if options.repeat > 1:
            waited = settle() if number > 1 else 0.0  # the last run's load decays first
            print(f"== run {number} of {options.repeat}"
                  f"{f' (waited {waited:.0f} s for the load to settle)' if waited else ''}",
                  flush=True)
        runs.append(run_all(options))
        print(render(runs[-1], options), flush=True)
    summary = summarise_runs([run_ratios(run, options) for run in runs])
    loads = [(run.load_before, run.load_after) for run in runs
             if run.load_before is not None and run.load_after is not None]
    if options.repeat > 1:
        print(render_repeats(summary, loads))
    results = runs[0]
    if options.json_path or options.png_path:
        from bench.figures import draw, results_to_json, write_json

        data = results_to_json(results, options)
        if options.repeat > 1:  # the first run's rows, every ratio's median over the runs
            data["repeats"] = {"runs": options.repeat, "ratios": summary,
                               "load": [[asdict(before), asdict(after)]
                                        for before, after in loads]}
        if options.json_path:
            write_json(data, options.json_path)
        if options.png_path:
            draw(data, options.png_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
