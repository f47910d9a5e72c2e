"""The main job, smaller: the escrow under SIGKILL chaos, audited, on SQLite and PostgreSQL.

Every service is a real process on a loopback port; the chaos loop kills ledgers, the
escrow and the client with SIGKILL and restarts them. The seed is fixed, so the stream
of transfers (including the ones meant to fail) is always the same; the moments of the
kills still vary with the machine, which is the point: the audit must pass whatever
they are. ``run_demo`` stops every process it started before it returns.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from chttp_core.db import make_engine
from chttp_examples.escrow.client import IMPOSSIBLE_AMOUNT, make_transfer
from chttp_examples.escrow.demo import postgres_databases, run_demo

pytestmark = pytest.mark.slow

SEED = 4242
TRANSFERS = 10


def _meant_to_fail(seed: int, count: int) -> int:
    return sum(
        any(leg["amount"] == IMPOSSIBLE_AMOUNT for leg in make_transfer(seed, ref)["gather"])
        for ref in range(count)
    )


def _processes_using(directory) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(directory) in line and "ps -eo" not in line]


def _check(report, databases_dir):
    assert report.finished, report.render()
    assert report.audit.ok, report.render()
    assert report.audit.transfers == TRANSFERS
    states = report.audit.states
    assert states.get("completed", 0) + states.get("refunded", 0) == TRANSFERS
    assert states.get("refunded", 0) >= _meant_to_fail(SEED, TRANSFERS)
    # Every refund is explained in the report, and the planned failures are among them.
    reasons = report.audit.refund_reasons
    assert sum(reasons.values()) == states.get("refunded", 0)
    assert 0 < reasons["meant to fail"] <= _meant_to_fail(SEED, TRANSFERS)
    assert "  refunds     " in report.render()
    assert report.audit.total_before == report.audit.total_after
    assert sum(report.kills.values()) > 0
    assert _processes_using(databases_dir) == []


def test_the_seed_has_transfers_meant_to_fail():
    assert 0 < _meant_to_fail(SEED, TRANSFERS) < TRANSFERS


def test_escrow_under_chaos_on_sqlite(tmp_path):
    directory = tmp_path / "demo"
    report = run_demo(transfers=TRANSFERS, kill_rate=1.0, seed=SEED, db_dir=directory,
                      timeout=240, window=4)
    _check(report, directory)


def test_escrow_under_chaos_on_postgresql(tmp_path, pg_cluster):
    directory = tmp_path / "demo"
    databases = postgres_databases(pg_cluster.create_database, prefix="chaos_pg")
    report = run_demo(transfers=TRANSFERS, kill_rate=1.0, seed=SEED, db_dir=directory,
                      databases=databases, timeout=240, window=4)
    _check(report, directory)
    engine = make_engine(databases.escrow)
    try:
        assert engine.dialect.name == "postgresql"
    finally:
        engine.dispose()


def test_the_cli_runs_a_calm_demo_and_exits_zero(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chttp_server.cli", "demo", "--transfers", "3", "--kill-rate", "0",
         "--seed", "1", "--db-dir", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    assert "requested 3, accepted 3" in result.stdout


def test_a_non_empty_db_dir_is_refused(tmp_path):
    (tmp_path / "old.db").write_text("")
    with pytest.raises(SystemExit, match="not empty"):
        run_demo(transfers=1, kill_rate=0, seed=1, db_dir=tmp_path)


def test_a_run_cut_off_by_its_time_limit_is_audited_and_never_cries_wolf(tmp_path):
    # Whether 40 transfers under chaos fit in 8 seconds depends on the machine; either
    # way nothing may be wrong, and a cut-off run must say so and exit 3, not 1.
    report = run_demo(transfers=40, kill_rate=2.0, seed=SEED, db_dir=tmp_path / "demo",
                      timeout=8, window=4)
    assert report.audit.ok, report.render()
    assert report.audit.total_after + report.audit.held == report.audit.total_before
    if report.finished:
        assert report.exit_status == 0 and report.audit.complete
    else:
        assert report.exit_status == 3 and not report.audit.complete
        assert "UNFINISHED" in report.render() and "FAILED" not in report.render()
    assert _processes_using(tmp_path / "demo") == []
