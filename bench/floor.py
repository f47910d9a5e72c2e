"""The database's own limits, measured with ``pgbench`` beside the HTTP rows.

``pgbench`` (shipped with the PostgreSQL server binaries) runs a custom script at the
same concurrency as the HTTP runs; its per-transaction log (``-l``) gives exact p50/p99.
Three scripts:

* ``floor``: the row the application inserts, one autocommitted transaction each (one
  round trip) — the database's own insert rate; what the HTTP rows lose against it is
  Python, HTTP and middleware.
* ``bare``: what the bare application sends for ``POST /items``: ``BEGIN``, the insert,
  ``COMMIT`` (psycopg2 sends each as a round trip of its own).
* ``certified``: what the certified receiver sends for the same request on PostgreSQL +
  psycopg2, statement for statement and round trip for round trip: ``BEGIN`` with the
  claim (:data:`chttp_server.store_dbapi.CLAIM_EXECUTE`), the insert, the stored
  response (:data:`~chttp_server.store_dbapi.COMPLETE_EXECUTE`) with ``COMMIT``
  (pgbench's ``\\;`` sends two statements as one query); the claim and the response
  prepared together once per session, as the receiver's sessions do.

* ``advisory``: a design measured and not taken (issue 12): the message row written
  once, at completion, while a transaction-scoped advisory lock on the key keeps a
  concurrent duplicate waiting (``BEGIN`` with ``pg_try_advisory_xact_lock`` and the
  read of a stored row; the insert, then a row ``INSERT`` with the response and
  ``COMMIT``), instead of the claim's insert and the response's update. Same round
  trips; it saves one row version, and it would need a second read for a duplicate that
  waited (the lock and the read share one snapshot).

``certified / bare`` of the bare and certified scripts is what the database alone allows the HTTP
ratio to reach: the HTTP rows add the server's Python on top of it (issue 12's
closing question, what bounds the ratio). Both scripts use the simple query protocol.
``python -m bench.row_variants`` measures variants of the message row against ``bare``
the same way (issue 20).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from chttp_server import store_dbapi
from chttp_server.testing import find_postgres_bin

from bench.load import BODY, LoadResult, summarise

__all__ = ["pgbench_floor", "pgbench_script", "SCRIPTS"]

_INSERT = "INSERT INTO bench_items (message_id, payload) VALUES ({id}, '{body}')"
#: Unique per transaction: a random 60-bit number per run of the script.
_NEW_ID = "\\set n random(1, 1152921504606846975)\n"
_MESSAGE_ID = "'sql-:client_id-:n'"


def _certified_statement(sql: str) -> str:
    """A store_dbapi statement with its parameters as the receiver would send them."""
    values = {
        "scope": "''", "message_id": _MESSAGE_ID, "fingerprint": "'" + "f" * 64 + "'",
        "state": "'completed'", "received_at": "now()",
        "expires_at": "now() + interval '15 days'", "lock_timeout": "'5000ms'",
        "status": "201",
        "headers": "'[[\"Content-Type\", \"application/json\"], [\"Content-Length\", \"12\"]]'",
        "body": "convert_to('{\"ok\": true}', 'UTF8')",
    }
    for name, value in values.items():
        sql = sql.replace(f"%({name})s", value)
    return sql


_ADVISORY_CLAIM = (
    "SELECT pg_try_advisory_xact_lock(hashtextextended(%(message_id)s, 0)) AS claimed, "
    "stored.* FROM (SELECT 1) AS one LEFT JOIN chttp_messages AS stored "
    "ON stored.scope = %(scope)s AND stored.message_id = %(message_id)s"
)
_ADVISORY_COMPLETE = (
    "INSERT INTO chttp_messages (scope, message_id, fingerprint, state, received_at, "
    "expires_at, status, headers, body) VALUES (%(scope)s, %(message_id)s, %(fingerprint)s, "
    "%(state)s, %(received_at)s, %(expires_at)s, %(status)s, %(headers)s, %(body)s) "
    "ON CONFLICT (scope, message_id) DO NOTHING"
)

#: Script name -> pgbench script.
SCRIPTS = {
    "floor": _INSERT.format(id="NULL", body=BODY) + ";\n",
    "bare": "BEGIN;\n" + _INSERT.format(id="NULL", body=BODY) + ";\nCOMMIT;\n",
    "certified": (
        _NEW_ID
        # The claim is a prepared statement, prepared once per session as the receiver's
        # sessions do (pgbench keeps each client's variables between transactions).
        + "\\if :prepared = 0\n" + store_dbapi.CLAIM_PREPARE + ";\n"
        + store_dbapi.COMPLETE_PREPARE + ";\n\\set prepared 1\n\\endif\n"
        + "BEGIN \\; " + _certified_statement(store_dbapi.CLAIM_EXECUTE) + ";\n"
        + _INSERT.format(id=_MESSAGE_ID, body=BODY) + ";\n"
        + _certified_statement(store_dbapi.COMPLETE_EXECUTE) + " \\; COMMIT;\n"
    ),
    "advisory": (
        _NEW_ID
        + "BEGIN \\; " + _certified_statement(_ADVISORY_CLAIM) + ";\n"
        + _INSERT.format(id=_MESSAGE_ID, body=BODY) + ";\n"
        + _certified_statement(_ADVISORY_COMPLETE) + " \\; COMMIT;\n"
    ),
}


def pgbench_script(name: str, *, port: int, database: str, concurrency: int,
                   duration: float) -> LoadResult:
    """Run :data:`SCRIPTS` ``[name]`` for ``duration`` seconds at ``concurrency`` clients."""
    pgbench = find_postgres_bin() / "pgbench"
    with tempfile.TemporaryDirectory(prefix="chttp-bench-pgbench-") as tmp:
        script = Path(tmp) / f"{name}.sql"
        script.write_text(SCRIPTS[name])
        command = [
            str(pgbench), "-n", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            "-f", str(script), "-D", "prepared=0",
            "-c", str(concurrency), "-j", str(min(concurrency, 2)),
            "-T", str(max(1, round(duration))), "-l", "--log-prefix", f"{tmp}/log",
            database,
        ]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp,
                                timeout=duration + 60)
        failed = [line for line in result.stdout.splitlines()
                  if line.startswith("number of failed transactions:")
                  and not line.endswith(": 0 (0.000%)")]
        if result.returncode != 0 or failed:
            raise RuntimeError(f"pgbench failed: {result.stdout}{result.stderr}")
        latencies: list[float] = []
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                # client_id transaction_no latency_us script_no epoch_s epoch_us
                latencies.append(int(line.split()[2]) / 1e6)
    elapsed = float(max(1, round(duration)))
    return summarise(latencies, elapsed, 0, tool="pgbench")


def pgbench_floor(*, port: int, database: str, concurrency: int, duration: float) -> LoadResult:
    """The database's own insert rate (the ``floor`` script)."""
    return pgbench_script("floor", port=port, database=database, concurrency=concurrency,
                          duration=duration)
