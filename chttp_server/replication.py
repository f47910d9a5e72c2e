"""A retry's answer from a stored row, held until the synchronous standbys have that row.

PostgreSQL makes a commit visible on the primary once its wait for the synchronous
standby *ends* — and that wait also ends when the committing backend is terminated (a
fast shutdown, as Patroni does when it demotes a leader): "committed locally, but might
not have been replicated". A retry that reads such a row and answers from it would hand
out an answer that a failover then loses (the next retry runs the handler again). A
transaction that only read never waits for the standbys, so on PostgreSQL with
``synchronous_standby_names`` set the reading transaction writes one WAL record —
:data:`HOLD_SQL`, a logical-decoding message with the prefix ``chttp`` — and its COMMIT,
later in the WAL than the commit it read, returns only once the standbys have both
(:meth:`MessageStore.hold_until_replicated <chttp_server.store.MessageStore.hold_until_replicated>`,
:meth:`MessageStore.commit <chttp_server.store.MessageStore.commit>`; docs/scale.rst).
Without synchronous standbys the statement writes nothing.
"""

from __future__ import annotations

from sqlalchemy import text

__all__ = ["HOLD_SQL", "HOLD_UNTIL_REPLICATED"]

#: Makes the reading transaction write when PostgreSQL has synchronous standbys, so that
#: its COMMIT waits until they hold everything committed before it; with none, it does
#: nothing. A transactional logical-decoding message is the smallest write there is (one
#: WAL record, no table, any role may emit it); a transaction id alone is not enough:
#: PostgreSQL waits for the standbys only after a transaction that wrote WAL before its
#: commit. Sent alone, or in the COMMIT's query string where the store says COMMIT itself.
HOLD_SQL = ("SELECT pg_logical_emit_message(true, 'chttp', '') FROM (SELECT 1) AS one "
            "WHERE current_setting('synchronous_standby_names') <> ''")
HOLD_UNTIL_REPLICATED = text(HOLD_SQL)
