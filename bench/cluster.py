"""The bench's database: one throwaway, *durable* PostgreSQL cluster and its tables.

The test fixtures run PostgreSQL with ``fsync=off``; a benchmark must not, or commits
cost nothing and every ratio is flattered. :class:`BenchDatabase` keeps the server's
defaults (``fsync``, ``synchronous_commit`` and ``full_page_writes`` on), creates the
chttp schema, the application's table and the peer's table, and can bulk-load message
rows with ``generate_series`` so the scale scenarios reach a million rows in seconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import psycopg2

from chttp_core import migrate
from chttp_server.testing import PostgresCluster

__all__ = ["BenchDatabase", "ITEMS_DDL", "ACCOUNTS_DDL"]

#: The application's own table: one row per POST, bare or certified alike.
ITEMS_DDL = """
CREATE TABLE IF NOT EXISTS bench_items (
    id bigserial PRIMARY KEY,
    message_id text,
    payload text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""

#: The realistic scenario's tables (bench/app.py ``POST /transfer``): accounts, a ledger.
ACCOUNTS_DDL = """
CREATE TABLE IF NOT EXISTS bench_accounts (
    id integer PRIMARY KEY,
    balance bigint NOT NULL DEFAULT 0
);
INSERT INTO bench_accounts (id) SELECT g FROM generate_series(1, 1000) AS g
    ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS bench_ledger (
    id bigserial PRIMARY KEY,
    account_id integer NOT NULL REFERENCES bench_accounts (id),
    amount bigint NOT NULL,
    message_id text,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass
class DatabaseSettings:
    """What the server actually runs with, read back from ``SHOW`` (printed in the report)."""

    fsync: str
    synchronous_commit: str
    full_page_writes: str
    server_version: str


class BenchDatabase:
    """A started cluster with database ``bench``; use as a context manager."""

    def __init__(self, *, name: str = "bench") -> None:
        self.name = name
        # The defaults of PostgresCluster: fsync and synchronous_commit stay on.
        self.cluster = PostgresCluster()
        self.url = ""

    def __enter__(self) -> BenchDatabase:
        self.cluster.start()
        try:
            self.url = self.cluster.create_database(self.name)
            migrate.upgrade(self.url)
            self.execute(ITEMS_DDL)
            self.execute(ACCOUNTS_DDL)
        except BaseException:
            # __exit__ does not run when __enter__ fails: a server left running would
            # outlive the bench (found: a failed schema upgrade left one behind).
            self.cluster.destroy()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cluster.destroy()

    @property
    def port(self) -> int:
        return self.cluster.port

    def connect(self) -> Any:
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                      dbname=self.name)
        connection.autocommit = True
        return connection

    def execute(self, sql: str, params: Any = None) -> None:
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
        finally:
            connection.close()

    def scalar(self, sql: str, params: Any = None) -> Any:
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                row = cursor.fetchone()
                return row[0] if row else None
        finally:
            connection.close()

    def settings(self) -> DatabaseSettings:
        return DatabaseSettings(
            fsync=self.scalar("SHOW fsync"),
            synchronous_commit=self.scalar("SHOW synchronous_commit"),
            full_page_writes=self.scalar("SHOW full_page_writes"),
            server_version=self.scalar("SHOW server_version"),
        )

    def init_peer_schema(self) -> None:
        """Create idemkit's table the way its docs say (``idemkit init-pg <url>``)."""
        from idemkit.backends.postgres import init_pg

        asyncio.run(init_pg(self.url))

    # -- bulk loading for the scale scenarios -------------------------------------

    def copy_messages(self, *, template_id: str, prefix: str, start: int, stop: int,
                      expired: bool = False) -> None:
        """Insert ids ``prefix{start}`` … ``prefix{stop-1}`` as copies of a real stored row.

        The copies carry the template's fingerprint and stored response, so a retry of
        any of them with the template's request is a genuine replay. ``expired`` rows
        expired a day ago (purge fodder).
        """
        expires = "now() - interval '1 day'" if expired else "t.expires_at"
        self.execute(
            f"""
            INSERT INTO chttp_messages (scope, message_id, fingerprint, state, status,
                                        headers, body, received_at, expires_at)
            SELECT t.scope, %(prefix)s || g, t.fingerprint, t.state, t.status, t.headers,
                   t.body, t.received_at, {expires}
            FROM chttp_messages t, generate_series(%(start)s, %(stop)s - 1) AS g
            WHERE t.message_id = %(template)s
            ON CONFLICT DO NOTHING
            """,
            {"prefix": prefix, "start": start, "stop": stop, "template": template_id},
        )
        self.execute("VACUUM ANALYZE chttp_messages")

    def delete_messages_except(self, keep_id: str) -> None:
        self.execute("DELETE FROM chttp_messages WHERE message_id <> %s", (keep_id,))
        self.execute("VACUUM ANALYZE chttp_messages")

    def message_count(self) -> int:
        return int(self.scalar("SELECT count(*) FROM chttp_messages"))

    def xact_commits(self) -> int:
        """Committed transactions in this database so far (``pg_stat_database``)."""
        return int(self.scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ))
