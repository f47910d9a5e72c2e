"""How big the message store grows: rows, bytes and index size per million messages.

::

    python -m chttp_examples.multihost.size [--messages 1000000] [--db URL]

Stores real certified requests through ``CertifiedMiddleware`` (the :mod:`.app`
handler's ~100-byte JSON answer, with every header the middleware stores), then
multiplies them on PostgreSQL with one ``INSERT … SELECT`` that copies those rows under
fresh random ids (36-character UUIDs, as the protocol recommends) until the table holds
``--messages`` rows, and reads ``pg_relation_size``/``pg_indexes_size``. Then it
acknowledges every row (the sender's ``DELETE``: the response is dropped, a tombstone
stays until expiry), vacuums, and measures again. Without ``--db`` it starts a
throwaway cluster (:class:`chttp_server.testing.PostgresCluster`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["StoreSize", "measure", "main"]

#: Real messages stored through the middleware before the table is multiplied.
SEED_MESSAGES = 200


@dataclass(frozen=True)
class StoreSize:
    """``chttp_messages`` on disk, for ``rows`` rows (bytes)."""

    rows: int
    heap: int
    toast: int
    indexes: int

    @property
    def total(self) -> int:
        return self.heap + self.toast + self.indexes

    def per_million(self) -> str:
        scale = 1_000_000 / max(self.rows, 1)
        return (f"{self.rows} rows: table {self.heap * scale / 2**20:.0f} MiB, toast "
                f"{self.toast * scale / 2**20:.0f} MiB, indexes {self.indexes * scale / 2**20:.0f} "
                f"MiB, total {self.total * scale / 2**20:.0f} MiB per million messages "
                f"({self.total / max(self.rows, 1):.0f} bytes each)")


def _size(connection: Any) -> StoreSize:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM chttp_messages), pg_relation_size('chttp_messages'), "
            "COALESCE(pg_total_relation_size(NULLIF(reltoastrelid, 0)), 0), "
            "pg_indexes_size('chttp_messages') FROM pg_class WHERE relname = 'chttp_messages'")
        rows, heap, toast, indexes = cursor.fetchone()
    return StoreSize(int(rows), int(heap), int(toast), int(indexes))


def measure(url: str, messages: int) -> tuple[StoreSize, StoreSize, float]:
    """Store ``messages`` messages in the (empty) database at ``url``.

    Returns the size with every response stored, the size once all are acknowledged
    (tombstones, after ``VACUUM``), and the seconds the multiplying insert took.
    """
    import psycopg2
    import webob
    from chttp_examples.multihost.app import EFFECTS_DDL, EffectsApp
    from sqlalchemy.engine import make_url

    from chttp_core import migrate
    from chttp_server import CertifiedMiddleware

    migrate.upgrade(url)
    parsed = make_url(url)
    connection = psycopg2.connect(host=parsed.host, port=parsed.port, user=parsed.username,
                                  dbname=parsed.database)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(EFFECTS_DDL)
        middleware = CertifiedMiddleware(EffectsApp(), db_url=url)
        for number in range(min(SEED_MESSAGES, messages)):
            request = webob.Request.blank("/effects", method="POST", headers={
                "X-Message-ID": f"seed{number:04d}-0000-4000-8000-000000000000",
                "Content-Type": "application/json"})
            request.body = b'{"order": %d, "amount": "12.50", "currency": "EUR"}' % number
            response = request.get_response(middleware)
            if response.status_int != 200:
                raise RuntimeError(f"storing a seed message failed: {response.status}")
        middleware.engine.dispose()
        started = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO chttp_messages (scope, message_id, fingerprint, state, status, headers, "
                "body, received_at, expires_at) "
                "SELECT m.scope, gen_random_uuid()::text, m.fingerprint, m.state, m.status, m.headers, "
                "m.body, m.received_at, m.expires_at "
                "FROM generate_series(1, %s) AS n "
                "JOIN (SELECT row_number() OVER () - 1 AS k, * FROM chttp_messages) AS m "
                "ON m.k = n %% %s", (messages - min(SEED_MESSAGES, messages), min(SEED_MESSAGES, messages)))
            inserted = time.monotonic() - started
            cursor.execute("VACUUM ANALYZE chttp_messages")
            full = _size(connection)
            cursor.execute("UPDATE chttp_messages SET state = 'acknowledged', status = NULL, "
                           "headers = NULL, body = NULL")
            cursor.execute("VACUUM FULL chttp_messages")
            tombstones = _size(connection)
        return full, tombstones, inserted
    finally:
        connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.multihost.size")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--db", help="an empty PostgreSQL database (default: a throwaway cluster)")
    args = parser.parse_args(argv)
    cluster = None
    url = args.db
    if url is None:
        from chttp_server.testing import PostgresCluster

        cluster = PostgresCluster().start()
        url = cluster.create_database("size")
    try:
        full, tombstones, seconds = measure(url, args.messages)
    finally:
        if cluster is not None:
            cluster.destroy()
    print(f"stored responses: {full.per_million()}")
    print(f"acknowledged (tombstones, after VACUUM FULL): {tombstones.per_million()}")
    print(f"(multiplying insert: {seconds:.1f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
