"""The bench's own arithmetic: option parsing, percentiles, medians and the ratio report.

Cheap and server-free: the bench itself (``python -m bench``) is never run by the suite
and no figure it measures is a threshold here.
"""

from __future__ import annotations

import pytest

from bench.__main__ import parse_args
from bench.load import LoadResult, median_result, summarise
from bench.repeat import Load, render_repeats, run_ratios, settle, summarise_runs
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


def _run_with_everything() -> tuple[Results, Options]:
    options = Options(concurrencies=(1, 4))
    results = Results(tool="wrk")
    for c in (1, 4):
        results.grid.update({
            ("bare", c): _result(100 * c), ("certified", c): _result(90 * c),
            ("replay", c): LoadResult(rps=float("nan"), p50_ms=1.0, p99_ms=3.0,
                                       requests=0, errors=0, tool="wrk"), ("peer (idemkit)", c): _result(30 * c),
            ("bare /transfer", c): _result(50 * c), ("certified /transfer", c): _result(40 * c),
        })
    results.purge = {"before": _result(100), "during": _result(85), "concurrency": 4,
                     "deleted": 10, "purge_seconds": 1.0, "window_seconds": 1.0}
    return results, options


def test_results_json_round_trips_and_carries_the_ratios(tmp_path) -> None:
    from bench.figures import read_json, results_to_json, write_json

    results, options = _run_with_everything()
    data = results_to_json(results, options)
    path = tmp_path / "bench.json"
    write_json(data, path)
    assert read_json(path) == data
    certified = next(r for r in data["grid"] if r["scenario"] == "certified"
                     and r["concurrency"] == 4)
    assert certified["rps"] == 360
    replay = next(r for r in data["grid"] if r["scenario"] == "replay")
    assert replay["rps"] is None  # NaN is not JSON: it becomes null
    ratio = next(r for r in data["ratios"] if r["ratio"] == "transfer cert / bare"
                 and r["concurrency"] == 1)
    assert (ratio["value"], ratio["target"], ratio["verdict"]) == (0.8, 0.92, "MISSED")
    assert data["purge"]["during"]["rps"] == 85


def test_the_picture_is_a_png_drawn_from_the_json(tmp_path) -> None:
    from bench.figures import draw, main, results_to_json, write_json

    results, options = _run_with_everything()
    data = results_to_json(results, options)
    picture = tmp_path / "bench.png"
    draw(data, picture)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_json(data, tmp_path / "bench.json")
    redrawn = tmp_path / "again.png"
    assert main([str(tmp_path / "bench.json"), str(redrawn)]) == 0
    assert redrawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_the_realistic_ratio_and_the_dbos_comparison() -> None:
    results, options = _run_with_everything()
    results.sender = {
        "functions": 10, "functions_per_s": 30.0, "statuses": {201: 10},
        "journal_commits_per_send": 2.0, "commits_per_extra_send": 1.0,
        "commits_0_persist_1_send": 2.0, "commits_per_extra_persist": 0.0,
        "journal_commits_per_function_with_acks": 2.0,
        "journal_xact_commits_per_function": 4.0, "receiver_xact_commits_per_function": 2.0,
        "dbos": {"functions": 10, "functions_per_s": 10.0, "statuses": {201: 10},
                 "xact_commits_per_function": 50.0, "idle_xact_commits_per_s": 1.0,
                 "xact_commits_per_function_less_idle": 40.0},
    }
    text = render(results, options)
    line = next(l for l in text.splitlines() if l.startswith("transfer cert / bare"))
    assert "0.80" in line and line.split()[-1] == "MISSED"
    dbos = next(l for l in text.splitlines() if "resumable / DBOS" in l)
    assert "3.00" in dbos and "met" in dbos and "4.00 vs 40.00 (fewer)" in dbos


def test_the_sql_only_rows_are_reported_as_the_databases_bound() -> None:
    results = Results()
    results.grid = {("bare", 1): _result(100), ("certified", 1): _result(60),
                    ("bare sql (pgbench)", 1): _result(300),
                    ("certified sql (pgbench)", 1): _result(180)}
    text = render(results, Options(concurrencies=(1,)))
    line = next(line for line in text.splitlines() if line.startswith("certified / bare, sql"))
    assert line.split()[5] == "0.60"
    assert "advisory / bare, sql" not in text  # no advisory row measured: no ratio printed
    # A bare request takes 10 ms; the certified SQL adds 1/180 - 1/300 s = 2.22 ms.
    cap = next(line for line in text.splitlines() if line.startswith("certified / bare, db cap"))
    assert cap.split()[6] == "0.82"
    assert "transfer, db cap" not in text  # no /transfer row measured


def test_report_compares_the_fastapi_rows_with_their_target() -> None:
    options = Options(concurrencies=(1, 16))
    results = Results(tool="wrk")
    results.grid = {("fastapi bare", 1): _result(100), ("fastapi certified", 1): _result(85),
                    ("fastapi bare", 16): _result(200), ("fastapi certified", 16): _result(120)}
    text = render(results, options)
    lines = [l for l in text.splitlines() if l.startswith("fastapi cert / bare")]
    assert [(l.split()[4], l.split()[5], l.split()[-1]) for l in lines] == [
        ("1", "0.85", "met"), ("16", "0.60", "MISSED")]
    assert "fastapi bare" in text and "fastapi certified" in text
    assert "uvicorn, 4 worker processes" in text


def test_rows_selects_groups_of_grid_rows() -> None:
    from bench.scenarios import row_group

    options = parse_args(["--only", "grid", "--rows", "fastapi", "floor"])
    assert options.only == frozenset({"grid"})
    assert options.rows == frozenset({"fastapi", "floor"})
    assert parse_args([]).rows == frozenset()
    assert [row_group(m) for m in ("bare", "certified-default", "peer", "django-bare",
                                   "fastapi-certified")] == ["wsgi", "wsgi", "peer", "django",
                                                             "fastapi"]
    with pytest.raises(SystemExit):
        parse_args(["--rows", "nonsense"])


def test_the_fastapi_rows_get_their_database_cap_when_the_sql_rows_ran() -> None:
    results = Results()
    results.grid = {("fastapi bare", 1): _result(100), ("fastapi certified", 1): _result(60),
                    ("bare sql (pgbench)", 1): _result(300),
                    ("certified sql (pgbench)", 1): _result(180)}
    text = render(results, Options(concurrencies=(1,)))
    cap = next(line for line in text.splitlines() if line.startswith("fastapi, db cap"))
    assert cap.split()[4] == "0.82"
    assert not any(line.startswith("certified / bare, db cap") for line in text.splitlines())


def test_the_fastapi_floor_row_is_reported_against_the_bare_one() -> None:
    results = Results()
    results.grid = {("fastapi bare", 4): _result(100), ("fastapi certified", 4): _result(45),
                    ("fastapi +1 insert", 4): _result(82)}
    text = render(results, Options(concurrencies=(4,)))
    line = next(l for l in text.splitlines() if l.startswith("fastapi +1 insert / bare"))
    assert line.split()[6] == "0.82"
    assert "any one-row design's best" in line


def test_the_django_atomic_row_bounds_the_django_ratio() -> None:
    """Django's bare view runs in autocommit (one round trip); a certified request needs a
    transaction, so the bare view under ``atomic`` is reported against both."""
    results = Results()
    results.grid = {("django bare", 4): _result(100), ("django atomic", 4): _result(60),
                    ("django certified", 4): _result(45)}
    text = render(results, Options(concurrencies=(4,)))
    bound = next(l for l in text.splitlines() if l.startswith("django atomic / bare"))
    assert bound.split()[5] == "0.60" and "bound on Django certified / bare" in bound
    cost = next(l for l in text.splitlines() if l.startswith("django certified/atomic"))
    assert cost.split()[3] == "0.75"


def test_report_shows_the_celery_ratio_and_commits_per_task() -> None:
    from bench.report import render
    from bench.scenarios import Options, Results

    results = Results(celery={"tasks": 200, "rounds": 3, "concurrency": 4, "plain_per_s": 100.0,
                              "resumable_per_s": 70.0, "journal_xact_commits_per_task": 2.5})
    text = render(results, Options())
    assert "plain 100.0 tasks/s, resumable 70.0 tasks/s" in text
    assert "resumable / plain: 0.70 (target >= 0.80 MISSED)" in text
    assert "2.50 xact_commit per task" in text
    skipped = render(Results(celery={"skipped": "redis-server is not installed"}), Options())
    assert "celery: skipped: redis-server is not installed" in skipped


def _async_sender(resumable_per_s: float, dbos_per_s: float) -> dict[str, object]:
    return {
        "functions": 200, "concurrency": 16, "functions_per_s": resumable_per_s,
        "cpu_ms_per_function": 2.5, "statuses": {201: 200}, "journal_commits_per_function": 2.0,
        "journal_xact_commits_per_function": 3.0, "receiver_xact_commits_per_function": 2.0,
        "dbos": {"functions": 200, "concurrency": 16, "functions_per_s": dbos_per_s,
                 "cpu_ms_per_function": 10.0, "statuses": {201: 200}, "xact_commits_per_function": 50.0,
                 "idle_xact_commits_per_s": 1.0, "xact_commits_per_function_less_idle": 45.0},
    }


@pytest.mark.parametrize(("resumable", "verdict"), [
    pytest.param(400.0, "met", id="at-least-3x"), pytest.param(200.0, "MISSED", id="below")])
def test_report_compares_async_resumable_functions_with_dbos_async_workflows(
        resumable: float, verdict: str) -> None:
    results = Results(async_sender=_async_sender(resumable, 100.0))
    text = render(results, Options())
    lines = text.splitlines()
    head = next(l for l in lines if l.startswith("async sender:"))
    assert "200 async def resumable functions" in head and "16 at once" in head
    assert f"{resumable:.1f} functions/s, 2.50 ms CPU per function in the caller" in head
    assert any("journal commits per function" in l and "2.00" in l and "journal database 3.00"
               in l for l in lines)
    assert any(l.strip().startswith("DBOS async workflow") and "100.0 functions/s" in l
               and "45.00 less" in l for l in lines)
    ratio = next(l for l in lines if "async resumable / DBOS" in l)
    assert f"{resumable / 100:.2f} in functions/s (target >= 3.00 {verdict})" in ratio
    assert "3.00 vs 45.00 (fewer)" in ratio
    assert "2.50 vs 10.00 ms (DBOS / resumable 4.00)" in ratio


def test_the_async_sender_row_says_why_it_or_its_peer_did_not_run() -> None:
    skipped = render(Results(async_sender={"skipped": "chttp_client not ready"}), Options())
    assert "async sender: skipped: chttp_client not ready" in skipped
    sender = _async_sender(300.0, 100.0)
    sender["dbos"] = {"skipped": "dbos not installed"}
    text = render(Results(async_sender=sender), Options())
    assert "DBOS async: skipped: dbos not installed" in text
    assert "async resumable / DBOS" not in text
    del sender["cpu_ms_per_function"]
    assert "functions/s, CPU n/a" in render(Results(async_sender=sender), Options())


def test_async_sender_is_a_scenario_with_its_concurrency_and_in_the_json() -> None:
    from bench.figures import results_to_json

    options = parse_args(["--only", "async-sender", "--sender-concurrency", "8"])
    assert options.only == frozenset({"async-sender"})
    assert (options.sender_concurrency, parse_args([]).sender_concurrency) == (8, 16)
    data = results_to_json(Results(async_sender=_async_sender(300.0, 100.0)), options)
    assert data["async_sender"]["dbos"]["functions_per_s"] == 100.0


def test_the_purge_window_weighs_each_slice_by_how_long_it_lasted():
    """The "during the purge" figure is throughput over the whole purge: a slow stretch
    counts for as long as it lasted (a median of slices would hide it)."""
    from bench.load import LoadResult, combined

    quick = LoadResult(rps=100.0, p50_ms=1.0, p99_ms=5.0, requests=100, errors=0, tool="wrk")
    slow = LoadResult(rps=50.0, p50_ms=3.0, p99_ms=9.0, requests=450, errors=1, tool="wrk")
    whole = combined([quick, slow])
    assert whole.rps == pytest.approx(55.0)          # 550 requests in 1 s + 9 s
    assert whole.requests == 550 and whole.errors == 1 and whole.p99_ms == 9.0


def test_report_shows_the_takeover_times() -> None:
    from bench.report import render
    from bench.scenarios import Options, Results

    takeover = {"rounds": 3, "oplogs": 48, "heartbeat_s": 5.0, "lease_s": 15.0, "median_s": 12.5,
                "min_s": 10.1, "max_s": 15.0, "exactly_once": True}
    text = render(Results(takeover=takeover), Options())
    assert ("takeover: 48 oplogs of SIGKILLed workers on another host (3 storm(s)), heartbeat "
            "5.0 s, lease 15.0 s: taken over 10.10 / 12.50 / 15.00 s after the kill") in text
    skipped = render(Results(takeover={"skipped": "takeover run failed: X"}), Options())
    assert "takeover: skipped: takeover run failed: X" in skipped


@pytest.mark.slow
def test_the_takeover_storm_takes_every_oplog_over_once(tmp_path) -> None:
    """Workers SIGKILLed under one host name, resumed under another: every in-flight
    message resent under its id, every handler run once (the times are only printed)."""
    from bench.takeover import storm

    result = storm(f"sqlite:///{tmp_path / 'journal.db'}", f"sqlite:///{tmp_path / 'receiver.db'}",
                   heartbeat=0.3, workers=2, functions=3)
    print(result)
    assert result["resent_same_ids"] and result["handler_runs_once"]
    assert len(result["takeovers_s"]) == result["oplogs"] == 6


def test_repeat_is_parsed_and_defaults_to_one_run() -> None:
    assert parse_args([]).repeat == 1
    assert parse_args(["--repeat", "3"]).repeat == 3


@pytest.mark.parametrize(("before", "noted"), [(0.3, False), (1.5, True)], ids=["idle", "busy"])
def test_report_prints_the_load_average_and_says_when_the_machine_was_busy(
        before: float, noted: bool) -> None:
    results = Results(tool="wrk", load_before=Load(before, 1.0, 1.0, 2),
                      load_after=Load(2.5, 1.2, 1.0, 2))
    text = render(results, Options(concurrencies=(1,)))
    assert f"before {before:.2f}/1.00/1.00, after 2.50/1.20/1.00" in text
    assert ("BUSY" in text) is noted


def test_repeats_report_every_ratio_s_median_and_spread() -> None:
    options = Options(concurrencies=(4,))
    runs = []
    for certified, flask in ((60.0, 50.0), (90.0, 80.0), (70.0, 75.0)):
        results = Results(tool="wrk")
        results.grid = {("bare", 4): _result(100), ("certified", 4): _result(certified),
                        ("flask bare", 4): _result(100), ("flask certified", 4): _result(flask)}
        runs.append(run_ratios(results, options))
    summary = {row["ratio"]: row for row in summarise_runs(runs)}
    certified_row = summary["certified / bare"]
    assert (certified_row["median"], certified_row["min"], certified_row["max"]) == \
        pytest.approx((0.7, 0.6, 0.9))
    assert certified_row["target"] == 0.85
    assert summary["flask certified / bare"]["median"] == pytest.approx(0.75)
    loads = [(Load(0.2, 0, 0, 2), Load(1.9, 0, 0, 2)), (Load(1.4, 0, 0, 2), Load(2.0, 0, 0, 2))]
    text = render_repeats(list(summary.values()), loads)
    assert "certified / bare" in text and "0.70  0.60-0.90" in text
    assert "run 2: load average before 1.40" in text and text.count("BUSY") == 1


def test_settle_waits_for_the_load_to_fall_below_busy_and_gives_up_after_max_wait() -> None:
    loads = iter([Load(1.8, 1, 1, 2), Load(1.2, 1, 1, 2), Load(0.6, 1, 1, 2)])
    slept: list[float] = []
    assert settle(60, read=lambda: next(loads), sleep=slept.append, step=5) == 10
    assert slept == [5, 5]
    assert settle(12, read=lambda: Load(3.0, 3, 3, 2), sleep=lambda _s: None, step=5) == 15


def test_the_profile_by_module_sums_own_time_per_request_largest_first() -> None:
    import cProfile
    import json
    import pstats

    from bench.profile import by_module

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(50):
        json.dumps({"a": list(range(200))})
    profiler.disable()
    rows = by_module(pstats.Stats(profiler), requests=50)
    modules = [module for module, _micros, _calls in rows]
    assert "json/__init__.py" in modules  # the standard library's prefix is cut
    assert [micros for _m, micros, _c in rows] == sorted((m for _x, m, _c in rows), reverse=True)
    calls = dict((module, per) for module, _micros, per in rows)
    assert calls["json/__init__.py"] == 1.0  # one json.dumps per "request"


def _created(environ, start_response):
    environ["wsgi.input"].read()
    start_response("201 Created", [("Content-Length", "0")])
    return [b""]


def test_bytecode_counts_are_exact_and_per_request() -> None:
    from bench.bytecodes import by_module, count, module_of

    once = by_module(count(_created, [None] * 5), requests=5)
    again = by_module(count(_created, [None] * 5), requests=5)
    twice_as_many = by_module(count(_created, [None] * 10), requests=10)
    here = module_of(__file__)
    assert here == "tests/bench/test_bench_report.py"
    assert once[here] > 0
    assert once == again  # counted, not timed: the same on every run
    assert twice_as_many[here] == once[here]  # per request (the driver's own loop is not)
