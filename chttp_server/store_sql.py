"""The message store's statements through SQLAlchemy: the claim, the stored response and
the lookup as every driver but the DB-API fast path runs them.

:class:`~chttp_server.store.MessageStore` decides which statement runs where and what
its failures mean; this module only holds the SQL, built once (constructing a statement
per request costs more Python than running it). :mod:`chttp_server.store_dbapi` holds the
same statements word for word in psycopg2's parameter style.
"""

from __future__ import annotations

from sqlalchemy import LargeBinary, bindparam, select, text, update

from chttp_core.schema import messages
from chttp_server import claim_guard

__all__ = ["PG_LOCK_NOT_AVAILABLE", "PG_CLAIM", "LOOKUP", "COMPLETE", "PG_COMPLETE"]

#: PostgreSQL's SQLSTATE for "lock_timeout expired" (lock_not_available).
PG_LOCK_NOT_AVAILABLE = "55P03"

#: The claim on PostgreSQL, in one round trip that also reads the row of a retry.
#:
#: * The insert's row source sets a transaction-local ``lock_timeout`` before the insert
#:   can wait on a concurrent claim of the same key, first saving the value in force in
#:   the placeholder setting ``chttp.saved_lock_timeout`` (the nested call is an argument,
#:   so it is evaluated first). ``RETURNING``, evaluated only for a row actually
#:   inserted (after any wait), puts the saved value back, so the application's own
#:   statements keep their lock_timeout. (Reading the default from the ``pg_settings``
#:   view instead cost ~1.8 ms per claim: it formats every setting.)
#: * The outer query always returns one row: ``claimed`` (1 if the insert happened) and
#:   the stored row if one is visible to the statement's snapshot, so a retry of a
#:   completed message is answered without a second query. After waiting on a concurrent
#:   claimer that then committed, the snapshot predates that commit and the row is not
#:   visible: the caller reads it with a separate lookup.
#: * ``chttp.saved_lock_timeout`` is set for the rest of the transaction only (never
#:   empty: it holds a lock_timeout), so it also marks the transaction as the one that
#:   claimed: once that transaction ends — committed or rolled back by anyone, the
#:   handler included — the setting reads ``''`` again, and the stored response's
#:   UPDATE refuses to run (:data:`chttp_server.claim_guard.PG_CLAIMING`).
PG_CLAIM = text(
    "WITH claim AS ("
    "INSERT INTO chttp_messages (scope, message_id, fingerprint, state, received_at, "
    "expires_at) "
    "SELECT :scope, :message_id, :fingerprint, :state, :received_at, :expires_at "
    "FROM (SELECT set_config('lock_timeout', :lock_timeout || left(set_config("
    "'chttp.saved_lock_timeout', current_setting('lock_timeout'), true), 0), true)"
    ") AS bounded_wait "
    "ON CONFLICT (scope, message_id) DO NOTHING "
    "RETURNING set_config('lock_timeout', current_setting('chttp.saved_lock_timeout'), true)"
    ") "
    "SELECT (SELECT count(*) FROM claim) AS claimed, stored.* "
    "FROM (SELECT 1) AS one LEFT JOIN chttp_messages AS stored "
    "ON stored.scope = :scope AND stored.message_id = :message_id"
)

LOOKUP = select(messages).where(
    messages.c.scope == bindparam("key_scope"), messages.c.message_id == bindparam("key_id")
)
COMPLETE = (
    update(messages)
    .where(messages.c.scope == bindparam("key_scope"),
           messages.c.message_id == bindparam("key_id"))
    .values(status=bindparam("new_status"), headers=bindparam("new_headers"),
            body=bindparam("new_body", type_=LargeBinary))
)
#: The portable UPDATE with the claim guard, for PostgreSQL drivers other than psycopg2.
PG_COMPLETE = COMPLETE.where(text(claim_guard.PG_CLAIMING))
