"""Variants of the message row, measured inside PostgreSQL with ``pgbench`` (issue 20).

Each variant is a schema of its own in one durable bench cluster (:class:`BenchDatabase`),
holding a ``chttp_messages`` table shaped as the variant says and its own ``bench_items``;
pgbench reaches it through ``search_path`` (``PGOPTIONS``). Per round, at each
concurrency, the bare script and every variant's certified script run back to back
(the order rotating each round), so a shared machine's noise falls on all of them
alike; the report is each variant's certified / bare ratio (median of the rounds) and
its WAL bytes per transaction (``pg_current_wal_lsn`` before and after its runs).

Run: ``python -m bench.row_variants --seconds 4 --rounds 3 [--only base,brin]``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2

from bench.cluster import BenchDatabase
from bench.floor import SCRIPTS, _certified_statement
from chttp_server import store_dbapi
from chttp_server.testing import find_postgres_bin

__all__ = ["VARIANTS", "TABLES", "run_variant", "main"]

#: The application's table of each variant's schema.
TABLES = _ITEMS = ("CREATE TABLE bench_items (id bigserial PRIMARY KEY, message_id text, "
          "payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());")
_COLUMNS = ("scope varchar(255) NOT NULL, message_id varchar(128) NOT NULL, "
            "fingerprint varchar(64) NOT NULL, state varchar(16) NOT NULL "
            "CHECK (state IN ('completed', 'acknowledged')), status integer, headers text, "
            "body bytea, received_at timestamptz NOT NULL, expires_at timestamptz NOT NULL")
_TABLE = f"CREATE TABLE chttp_messages ({_COLUMNS}, PRIMARY KEY (scope, message_id));"
_BTREE = "CREATE INDEX ON chttp_messages (expires_at);"
_BRIN = "CREATE INDEX ON chttp_messages USING brin (expires_at);"


def _certified(claim: str, complete: str, *, prepare_complete: bool = False,
               complete_types: tuple[tuple[str, str], ...] = (
                   ("status", "integer"), ("headers", "text"), ("body", "bytea"),
                   ("scope", "text"), ("message_id", "text"))) -> str:
    """The certified pgbench script of bench/floor.py with another claim / completion."""
    prepare, execute = store_dbapi._prepared("claim", claim, (
        ("scope", "text"), ("message_id", "text"), ("fingerprint", "text"), ("state", "text"),
        ("received_at", "timestamptz"), ("expires_at", "timestamptz"), ("lock_timeout", "text"),
    ))
    if prepare_complete:
        prepare_c, complete = store_dbapi._prepared("complete", complete, complete_types)
        prepare += ";\n" + prepare_c
    return (
        "\\set n random(1, 1152921504606846975)\n"
        "\\if :prepared = 0\n" + prepare + ";\n\\set prepared 1\n\\endif\n"
        "BEGIN \\; " + _certified_statement(execute) + ";\n"
        "INSERT INTO bench_items (message_id, payload) VALUES ('sql-:client_id-:n', "
        "'{\"amount\": 1}');\n"
        + _certified_statement(complete) + " \\; COMMIT;\n"
    )


_CLAIM = store_dbapi.CLAIM
_COMPLETE = store_dbapi.COMPLETE
#: The claim whose read of a stored row is skipped when the insert claimed (the row it
#: would find is never visible to the statement's own snapshot then).
_CLAIM_NO_JOIN = _CLAIM.replace(
    "ON stored.scope = %(scope)s", "ON NOT EXISTS (SELECT FROM claim) AND stored.scope = %(scope)s")

_DIGEST = "sha256(convert_to(%(scope)s || chr(31) || %(message_id)s, 'UTF8'))"
_ONE_COLUMN = dict(
    complete_types=(("status", "integer"), ("body", "bytea"), ("scope", "text"),
                    ("message_id", "text")))

_CLAIM_UNGUARDED = re.sub(
    r"FROM \(SELECT set_config.*AS bounded_wait ", "",
    _CLAIM.replace("RETURNING set_config('lock_timeout', current_setting("
                   "'chttp.saved_lock_timeout'), true)", "RETURNING 1"))
_COMPLETE_UNGUARDED = _COMPLETE.replace(f" AND {store_dbapi.CLAIMING}", "")
_READ_ONLY = ("SELECT 0 AS claimed, stored.* FROM (SELECT 1) AS one LEFT JOIN chttp_messages "
              "AS stored ON stored.scope = %(scope)s AND stored.message_id = %(message_id)s "
              "AND %(fingerprint)s || %(state)s || %(received_at)s || %(expires_at)s || "
              "%(lock_timeout)s <> ''")
_INSERT_ONCE = ("INSERT INTO chttp_messages (scope, message_id, fingerprint, state, status, "
                "headers, body, received_at, expires_at) VALUES (%(scope)s, %(message_id)s, "
                "%(fingerprint)s, 'completed', %(status)s, %(headers)s, %(body)s, now(), "
                "now() + interval '15 days')")
_ONCE_TYPES = (("scope", "text"), ("message_id", "text"), ("fingerprint", "text"),
               ("status", "integer"), ("headers", "text"), ("body", "bytea"))

#: name -> (DDL, certified script). "landed": the row and statements before issue 20
#: (the stored response planned per request); "prepared": the receiver now
#: (bench/floor.py's certified script). The others are "prepared" plus one change each,
#: measured and not taken (figures in README.rst's performance section).
VARIANTS: dict[str, tuple[str, str]] = {
    "landed": (_TABLE + _BTREE, _certified(_CLAIM, _COMPLETE)),
    "prepared": (_TABLE + _BTREE, SCRIPTS["certified"]),
    # BRIN instead of the b-tree on expires_at: one index entry fewer per insert.
    "+brin": (_TABLE + _BRIN, SCRIPTS["certified"]),
    # The claim's read of a stored row skipped when the insert claimed.
    "+nojoin": (_TABLE + _BTREE, _certified(_CLAIM_NO_JOIN, _COMPLETE, prepare_complete=True)),
    # Headers and body in one column (here: the headers left out, an upper bound).
    "+onecol": (_TABLE.replace("headers text, ", "") + _BTREE, _certified(
        _CLAIM.replace("stored.headers, ", ""),
        _COMPLETE.replace("headers = %(headers)s, ", ""), prepare_complete=True,
        **_ONE_COLUMN)),
    # A fixed-width key: sha256 of scope and id (computed by the server), both kept.
    "+digest": (_TABLE.replace("scope varchar", "key bytea NOT NULL, scope varchar")
                .replace("PRIMARY KEY (scope, message_id)", "PRIMARY KEY (key)") + _BTREE,
                _certified(_CLAIM.replace("(scope, message_id, fingerprint", "(key, scope, "
                                          "message_id, fingerprint")
                           .replace("SELECT %(scope)s,", f"SELECT {_DIGEST}, %(scope)s,")
                           .replace("ON CONFLICT (scope, message_id)", "ON CONFLICT (key)")
                           .replace("ON stored.scope = %(scope)s AND stored.message_id = "
                                    "%(message_id)s", f"ON stored.key = {_DIGEST}"),
                           _COMPLETE.replace("WHERE scope = %(scope)s AND message_id = "
                                             "%(message_id)s", f"WHERE key = {_DIGEST}"),
                           prepare_complete=True)),
    # Without the claim's guard: no bounded lock wait (set_config of lock_timeout) and no
    # check that the completing transaction is the claiming one (what those cost).
    "-guard": (_TABLE + _BTREE, _certified(_CLAIM_UNGUARDED, _COMPLETE_UNGUARDED,
                                           prepare_complete=True)),
    # Without the b-tree on expires_at (the purge's index): what one index entry costs.
    "-expiresidx": (_TABLE, SCRIPTS["certified"]),
    # No claim at all: the stored row read, then inserted once with the response at the
    # end (no lock: not a design, the floor of any row written once).
    "once": (_TABLE + _BTREE, _certified(_READ_ONLY, _INSERT_ONCE, prepare_complete=True,
                                         complete_types=_ONCE_TYPES)),
    # Byte-wise key comparisons (the cluster's collation is C.UTF-8).
    "+collate-c": (_TABLE.replace("varchar(255) NOT NULL", 'varchar(255) COLLATE "C" NOT NULL')
                   .replace("varchar(128) NOT NULL", 'varchar(128) COLLATE "C" NOT NULL')
                   + _BTREE, SCRIPTS["certified"]),
}


def _server_cpu(data: Path) -> float:
    """Seconds of CPU the cluster has used: the postmaster's own and its reaped children's
    (``cutime``/``cstime``: backends that exited), plus its live children's."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        # fields[0] is the state (field 3); utime is field 14, cutime 16.
        if pid == postmaster:
            total += sum(int(v) for v in fields[11:15])
        elif int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_variant(port: int, schema: str, script: str, concurrency: int, seconds: int,
                database: str = "bench") -> int:
    """Run ``script`` against ``schema``; the number of transactions it completed."""
    with tempfile.TemporaryDirectory(prefix="chttp-rows-") as tmp:
        path = Path(tmp) / "script.sql"
        path.write_text(script)
        env = {**os.environ, "PGOPTIONS": f"-c search_path={schema}"}
        result = subprocess.run(
            [str(find_postgres_bin() / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(port),
             "-U", "postgres", "-f", str(path), "-D", "prepared=0", "-c", str(concurrency),
             "-j", str(min(concurrency, 2)), "-T", str(seconds), database],
            capture_output=True, text=True, env=env, timeout=seconds + 60)
        match = re.search(r"number of transactions actually processed: (\d+)", result.stdout)
        if result.returncode != 0 or match is None or "failed transactions: 0 " not in (
                result.stdout + " ").replace("(0.000%)", ""):
            raise RuntimeError(f"pgbench failed: {result.stdout}{result.stderr}")
        return int(match.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--only", default="", help="comma-separated variant names")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    with BenchDatabase() as db:
        connection = psycopg2.connect(db.url)
        connection.autocommit = True
        cursor = connection.cursor()

        def scalar(sql: str) -> int:
            cursor.execute(sql)
            return int(cursor.fetchone()[0])

        schemas = {"bare": "v_bare", **{n: "v_" + re.sub(r"\W", "_", n) for n in names}}
        cursor.execute(f"CREATE SCHEMA v_bare; SET search_path = v_bare; {_ITEMS}")
        for name in names:
            cursor.execute(f"CREATE SCHEMA {schemas[name]}; SET search_path = {schemas[name]}; "
                           f"{_ITEMS} {VARIANTS[name][0]}")
        scripts = {"bare": SCRIPTS["bare"], **{n: VARIANTS[n][1] for n in names}}
        tps: dict[tuple[str, int], list[float]] = {}
        wal: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        for round_number in range(args.rounds):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                order = list(scripts)
                shift = round_number % len(order)
                for name in order[shift:] + order[:shift]:
                    before = scalar("SELECT pg_current_wal_lsn() - '0/0'")
                    cpu_before = _server_cpu(db.cluster.data)
                    count = run_variant(db.port, schemas[name], scripts[name], concurrency,
                                     args.seconds)
                    time.sleep(0.3)  # pgbench's backends exit and are reaped
                    cpu.setdefault(name, []).append(
                        (_server_cpu(db.cluster.data) - cpu_before) / count * 1e6)
                    after = scalar("SELECT pg_current_wal_lsn() - '0/0'")
                    tps.setdefault((name, concurrency), []).append(count / args.seconds)
                    wal.setdefault(name, []).append((after - before) / count)
            print(f"round {round_number + 1} done; load {os.getloadavg()[0]:.2f}", flush=True)
        print(f"{'variant':<14} " + " ".join(f"c={c:<12}" for c in args.concurrency.split(","))
              + "  WAL B/txn  CPU us/txn  hot/upd")
        for name in scripts:
            ratios = []
            for c in (int(c) for c in args.concurrency.split(",")):
                r = [t / b for t, b in zip(tps[(name, c)], tps[("bare", c)])]
                ratios.append(f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")
            cursor.execute("SELECT coalesce(sum(n_tup_hot_upd), 0), coalesce(sum(n_tup_upd), 0) "
                           "FROM pg_stat_user_tables WHERE schemaname = %s "
                           "AND relname = 'chttp_messages'", (schemas[name],))
            hot, upd = cursor.fetchone()
            print(f"{name:<14} " + " ".join(f"{r:<14}" for r in ratios)
                  + f"  {statistics.median(wal[name]):9.0f}  {statistics.median(cpu[name]):10.0f}"
                  f"  {hot}/{upd}")
        print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
