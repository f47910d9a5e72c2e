"""The bench's own arithmetic: option parsing, percentiles, medians and the ratio report.

Cheap and server-free: the bench itself (``python -m bench``) is never run by the suite
and no figure it measures is a threshold here.
"""

from __future__ import annotations

import pytest

from bench.__main__ import parse_args
from bench.load import LoadResult, median_result, summarise
from bench.report import render
from bench.scenarios import Options, Results


def _result(rps: float, p50: float = 1.0) -> LoadResult:
    return LoadResult(rps=rps, p50_ms=p50, p99_ms=p50 * 3, requests=int(rps), errors=0,
                      tool="wrk")


def test_quick_mode_shrinks_every_dimension() -> None:
    options = parse_args(["--quick"])
    assert options.duration == 1.0
    assert options.concurrencies == (1, 4)
    assert options.scale_large == 100_000
    assert options.rounds == 1


def test_summarise_takes_exact_percentiles_from_latencies() -> None:
    result = summarise([n / 1000 for n in range(1, 101)], elapsed=2.0, errors=3, tool="t")
    assert result.rps == 50.0
    assert result.p50_ms == 51.0
    assert result.p99_ms == 100.0
    assert result.requests == 103


def test_median_of_slices_is_per_figure() -> None:
    merged = median_result([_result(100, 5), _result(300, 1), _result(200, 9)])
    assert (merged.rps, merged.p50_ms, merged.requests) == (200, 5, 600)


@pytest.mark.parametrize(
    ("certified", "verdict"),
    [pytest.param(90.0, "met", id="above-target"), pytest.param(50.0, "MISSED", id="below")],
)
def test_report_compares_ratios_with_targets(certified: float, verdict: str) -> None:
    options = Options(concurrencies=(4,))
    results = Results(tool="wrk")
    results.grid = {("floor (pgbench)", 4): _result(400), ("bare", 4): _result(100),
                    ("certified", 4): _result(certified), ("replay", 4): _result(120)}
    results.skipped["peer"] = "idemkit unavailable: ImportError"
    text = render(results, options)
    line = next(l for l in text.splitlines() if l.startswith("certified / bare"))
    assert line.split()[-1] == verdict
    assert f"{certified / 100:.2f}" in line
    assert "peer skipped" in text
    assert "idemkit unavailable" in text


def test_report_has_the_django_ratio_when_both_django_rows_ran() -> None:
    options = Options(concurrencies=(4,))
    results = Results(tool="wrk")
    results.grid = {("bare", 4): _result(100), ("certified", 4): _result(90),
                    ("django bare", 4): _result(80), ("django certified", 4): _result(60)}
    text = render(results, options)
    line = next(l for l in text.splitlines() if l.startswith("django certified / bare"))
    assert "0.75" in line
    assert "django bare" in text and "django certified" in text
