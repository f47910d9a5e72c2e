"""``chttp-server demo --asgi``: the escrow on uvicorn and async resumable functions, under chaos.

The same demo as tests/examples/test_demo.py with every service its ASGI twin — a
Starlette app on async SQLAlchemy behind ``chttp_server.asgi.CertifiedMiddleware``, one
uvicorn process each — and the escrow's driver an ``async def`` resumable function. The
chaos loop SIGKILLs the uvicorn processes and the client at the default kill rate; the
audit reads every database afterwards. The databases are kept (``--db-dir``) so the
test can check that the async driver is what ran.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest
from sqlalchemy import select

from chttp_core.db import make_engine
from chttp_core.schema import oplogs
from chttp_examples.escrow.cli import DEFAULT_KILL_RATE
from chttp_examples.escrow.demo import postgres_databases, run_demo
from chttp_examples.escrow.escrow_asgi import DRIVER_NAME

pytestmark = pytest.mark.slow

SEED = 4242
TRANSFERS = 10


def _oplog_functions(db_url: str) -> Counter[str]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            return Counter(connection.execute(select(oplogs.c.function)).scalars())
    finally:
        engine.dispose()


def _processes_using(directory) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(directory) in line and "ps -eo" not in line]


def test_the_cli_runs_the_asgi_demo_under_chaos_and_passes(tmp_path):
    directory = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "chttp_server.cli", "demo", "--asgi", "--transfers", str(TRANSFERS),
         "--seed", str(SEED), "--db-dir", str(directory), "--timeout", "300"],
        capture_output=True, text=True, timeout=400,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "PASSED" in result.stdout, report
    assert f"requested {TRANSFERS}, accepted {TRANSFERS}" in result.stdout, report
    assert f"escrow demo (ASGI: uvicorn, async driver) — seed {SEED}, kill rate " \
           f"{DEFAULT_KILL_RATE}/s requested" in result.stdout, report
    killed = re.search(r"killed +(\d+) processes \(SIGKILL\): (.*)", result.stdout)
    assert killed is not None and int(killed.group(1)) > 0, report
    # The first kill goes to the first service ready for min_uptime: a uvicorn process.
    assert re.search(r"(ledger-[AB]|escrow) [1-9]", killed.group(2)), report
    # The services were the ASGI twins: the escrow's journal holds one async-driver
    # oplog per transfer (a second oplog for one transfer would find it claimed and stop).
    functions = _oplog_functions(f"sqlite:///{directory / 'escrow.db'}")
    assert functions[DRIVER_NAME] >= TRANSFERS, functions
    assert set(functions) == {DRIVER_NAME}, functions
    assert _processes_using(directory) == []


def test_the_asgi_demo_under_chaos_on_postgresql(tmp_path, pg_cluster):
    directory = tmp_path / "demo"
    databases = postgres_databases(pg_cluster.create_database, prefix="chaos_asgi")
    report = run_demo(transfers=TRANSFERS, kill_rate=DEFAULT_KILL_RATE, seed=SEED,
                      db_dir=directory, databases=databases, timeout=240, window=4, asgi=True)
    assert report.finished and report.audit.ok, report.render()
    assert report.exit_status == 0
    assert report.audit.transfers == TRANSFERS
    assert report.audit.total_before == report.audit.total_after
    assert set(report.kills) - {"client"}, report.render()   # uvicorn processes SIGKILLed
    assert set(_oplog_functions(databases.escrow)) == {DRIVER_NAME}
    assert _processes_using(directory) == []


def test_without_the_asgi_extra_the_demo_says_what_to_install_and_starts_nothing(tmp_path):
    # uvicorn made unimportable in the child, as on a machine without the 'asgi' extra.
    script = ("import sys; sys.modules['uvicorn'] = None\n"
              "from chttp_server.cli import main\n"
              f"sys.exit(main(['demo', '--asgi', '--db-dir', {str(tmp_path / 'demo')!r}]))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--asgi needs uvicorn: pip install -e '.[asgi]'" in result.stderr
    assert not (tmp_path / "demo").exists()
