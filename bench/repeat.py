"""``--repeat N``: the same selection run N times, its ratios as median and spread, and
the machine's load around every run.

Why: on a two-core machine shared with other work one run's ratios move by 0.1-0.2
from run to run (issue 20: the kept run met targets that the next run on the same kind
of machine missed). A figure worth quoting is the median of several full runs with its
spread next to it, and a run made while something else kept the cores busy must say
so. The load average (``os.getloadavg``: 1, 5 and 15 minutes) is read before and after
each run; "busy" means the 1-minute figure was at least half the cores before the run
began, when nothing of the bench was running yet. The 1-minute average decays over about
a minute, so right after a run it still counts that run: before each later run the bench
waits (:func:`settle`, at most 90 s) for it to fall below the "busy" line, and a run that
starts busy all the same was started while something else kept the cores busy.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, cast

from bench.load import LoadResult
from bench.report import RATIOS, informative_ratios

if TYPE_CHECKING:
    from bench.scenarios import Options, Results

__all__ = ["Load", "machine_load", "busy", "settle", "load_line", "run_ratios", "summarise_runs",
           "render_repeats"]

#: A 1-minute load average of at least this share of the cores, before a run, is "busy".
BUSY_SHARE = 0.5


@dataclass(frozen=True)
class Load:
    """The load average (1, 5, 15 min) and the number of cores it is measured against."""

    one: float
    five: float
    fifteen: float
    cores: int


def machine_load() -> Load:
    one, five, fifteen = os.getloadavg()
    return Load(one, five, fifteen, os.cpu_count() or 1)


def busy(before: Load) -> bool:
    return before.one >= BUSY_SHARE * before.cores


def settle(max_wait: float = 90.0, *, read: Callable[[], Load] = machine_load,
           sleep: Callable[[float], None] = time.sleep, step: float = 5.0) -> float:
    """Wait until the machine is no longer busy (at most ``max_wait`` s); seconds waited."""
    waited = 0.0
    while busy(read()) and waited < max_wait:
        sleep(step)
        waited += step
    return waited


def load_line(before: Load | None, after: Load | None) -> list[str]:
    """The report's lines about the machine's load (none if it was not read)."""
    if before is None or after is None:
        return []
    lines = [f"load average (1/5/15 min) on {before.cores} cores: before "
             f"{before.one:.2f}/{before.five:.2f}/{before.fifteen:.2f}, after "
             f"{after.one:.2f}/{after.five:.2f}/{after.fifteen:.2f}"]
    if busy(before):
        lines.append(f"BUSY: other work was running when this run began (1-min load "
                     f"{before.one:.2f} on {before.cores} cores): its figures are noisy; "
                     "quote the median of repeated runs (--repeat)")
    return lines


def run_ratios(results: Results, options: Options) -> dict[tuple[str, int], float]:
    """Every throughput ratio one run measured: (label, concurrency) -> value."""
    from bench.report import ratio_rows

    found: dict[tuple[str, int], float] = {}
    for row in ratio_rows(results.grid, options.concurrencies):
        found[(str(row["ratio"]), cast(int, row["concurrency"]))] = cast(float, row["value"])
    found.update(informative_ratios(results.grid, options.concurrencies))
    for name, purge in (("purge during / before", results.purge),
                        ("paced purge during / before", results.purge_paced)):
        during, before = purge.get("during"), purge.get("before")
        if isinstance(during, LoadResult) and isinstance(before, LoadResult) and before.rps > 0:
            found[(name, 0)] = during.rps / before.rps
    return found


def summarise_runs(runs: list[dict[tuple[str, int], float]]) -> list[dict[str, object]]:
    """Per ratio present in every run: median, min, max and the values, in run order."""
    if not runs:
        return []
    keys = [key for key in runs[0] if all(key in run for run in runs)]
    targets = {label: target for label, _top, _bottom, target in RATIOS}
    summary: list[dict[str, object]] = []
    for label, concurrency in keys:
        values = [run[(label, concurrency)] for run in runs]
        summary.append({"ratio": label, "concurrency": concurrency,
                        "median": statistics.median(values), "min": min(values),
                        "max": max(values), "values": values,
                        "target": targets.get(label)})
    return summary


def render_repeats(summary: list[dict[str, object]], loads: list[tuple[Load, Load]]) -> str:
    """The table of medians and spreads, then every run's load."""
    lines = [f"ratios over {len(loads)} runs    conc  median  spread (min-max)  target",
             "-" * 68]
    for row in summary:
        target = row["target"]
        where = "" if not row["concurrency"] else row["concurrency"]
        lines.append(f"{row['ratio']:<24} {where:>4} {row['median']:>7.2f}  "
                     f"{row['min']:.2f}-{row['max']:.2f}"
                     f"{'' if target is None else f'         >= {target:.2f}'}")
    for number, (before, after) in enumerate(loads, start=1):
        mark = "  BUSY" if busy(before) else ""
        lines.append(f"run {number}: load average before {before.one:.2f}, after "
                     f"{after.one:.2f} (1 min, {before.cores} cores){mark}")
    return "\n".join(lines)
