"""The physical floor: the database's own rate of one-row insert transactions.

``pgbench`` (shipped with the PostgreSQL server binaries) runs a custom script that
inserts the same row the application inserts, one autocommitted transaction each, at
the same concurrency as the HTTP runs. Its per-transaction log (``-l``) gives exact
p50/p99. What the HTTP rows lose against this is Python, HTTP and middleware.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from chttp_server.testing import find_postgres_bin

from bench.load import BODY, LoadResult, summarise

__all__ = ["pgbench_floor"]

_SCRIPT = "INSERT INTO bench_items (message_id, payload) VALUES (NULL, '{body}');\n"


def pgbench_floor(*, port: int, database: str, concurrency: int, duration: float) -> LoadResult:
    pgbench = find_postgres_bin() / "pgbench"
    with tempfile.TemporaryDirectory(prefix="chttp-bench-pgbench-") as tmp:
        script = Path(tmp) / "insert.sql"
        script.write_text(_SCRIPT.format(body=BODY))
        command = [
            str(pgbench), "-n", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            "-f", str(script), "-c", str(concurrency), "-j", str(min(concurrency, 2)),
            "-T", str(max(1, round(duration))), "-l", "--log-prefix", f"{tmp}/log",
            database,
        ]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp,
                                timeout=duration + 60)
        if result.returncode != 0:
            raise RuntimeError(f"pgbench failed: {result.stdout}{result.stderr}")
        latencies: list[float] = []
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                # client_id transaction_no latency_us script_no epoch_s epoch_us
                latencies.append(int(line.split()[2]) / 1e6)
    elapsed = float(max(1, round(duration)))
    return summarise(latencies, elapsed, 0, tool="pgbench")
