"""Which statement the receiver is about to send, for the fault tests' injection points.

Under psycopg2 a transaction the store begins itself sends ``BEGIN`` with its first
statement and ``COMMIT`` with the stored response (chttp_server.store_dbapi), and the
claim and the response may be prepared statements: these matchers accept every form,
so one test covers the SQLAlchemy path and the DB-API path alike.
"""

from __future__ import annotations

__all__ = ["opened", "is_claim", "is_completion", "is_lookup", "is_hold", "is_commit", "is_rollback"]


def opened(statement: str) -> str:
    """``statement`` without the ``BEGIN; `` a fused transaction's first statement carries."""
    return statement.removeprefix("BEGIN; ")


def is_claim(statement: str) -> bool:
    # The SQLAlchemy claim, or the prepared one (prepared on demand: "ROLLBACK; PREPARE
    # chttp_claim_…; BEGIN; EXECUTE chttp_claim_…", chttp_server.store_dbapi.claim).
    return (opened(statement).startswith(("WITH claim AS", "EXECUTE chttp_claim"))
            or (statement.startswith("ROLLBACK; PREPARE chttp_claim_")))


def is_completion(statement: str) -> bool:
    return statement.lstrip().upper().startswith(("UPDATE CHTTP_MESSAGES", "EXECUTE CHTTP_COMPLETE"))


def is_lookup(statement: str) -> bool:
    return opened(statement).lstrip().upper().startswith("SELECT") and "chttp_messages" in statement


def is_hold(statement: str) -> bool:
    # A replay's (or GET's) wait for the synchronous standbys (MessageStore.hold_until_replicated).
    return "pg_logical_emit_message" in statement and "synchronous_standby_names" in statement


def is_commit(statement: str) -> bool:
    # "…; COMMIT": the stored response's UPDATE carrying the commit (one statement there).
    return statement == "COMMIT" or statement.endswith("; COMMIT")


def is_rollback(statement: str) -> bool:
    return statement == "ROLLBACK"
