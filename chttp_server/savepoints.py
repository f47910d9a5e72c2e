"""The joined sessions' savepoints without round trips of their own.

A view's session joined to the message's transaction (:mod:`chttp_server.sessions`)
runs inside a SAVEPOINT, so that its ``rollback()`` undoes only its own work. Sent as
SQLAlchemy sends them, the savepoint costs two round trips per view on top of the
application's own statements: ``SAVEPOINT`` before its first statement and
``RELEASE SAVEPOINT`` at its ``commit()`` (~300 µs and ~200 µs each, measured on the
bench's PostgreSQL: a third of what the Flask integration cost, issue 20). Neither
is needed for the guarantee:

* **RELEASE is skipped** while the connection carries a certified message: releasing
  only merges the savepoint into its parent, and the parent is the message's
  transaction, which ends with ``COMMIT`` (the view's writes become durable with the
  stored response) or ``ROLLBACK`` (nothing stays) either way. SQLAlchemy believes the
  savepoint released and never names it again (each ``Connection`` numbers its own),
  and on PostgreSQL a released savepoint keeps its subtransaction id until the top
  transaction ends anyway, so an unreleased one costs the server nothing more.
* **SAVEPOINT is deferred** (psycopg2 only, whose ``cursor.execute`` sends a query
  string of several statements in one round trip): it is sent in the same query string
  as the next statement that goes through the SQLAlchemy connection —
  ``SAVEPOINT sa_savepoint_1; INSERT …`` — which is where it would have been
  established anyway: nothing ran between the two. A ``ROLLBACK TO`` / ``RELEASE`` of a
  savepoint still pending (the view rolled back before it sent anything) sends
  nothing. Statements run on the raw DB-API connection, behind SQLAlchemy's back, do
  not send a pending savepoint: a view that mixes them with its session's
  ``rollback()`` would see them survive the rollback.

Only connections marked with :func:`mark` (the message's, while the handler's sessions
join it) are treated so; every other connection of the engine sends savepoints as
SQLAlchemy does. The hooks are installed once per engine (its dialect) by :func:`install`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from sqlalchemy import Connection, Engine

__all__ = ["install", "mark", "unmark"]

_INSTALLED = "_chttp_deferred_savepoints"
_INSTALL_LOCK = threading.Lock()
_STATE = "_chttp_savepoints"


class _Savepoints:
    """A marked connection's savepoints not yet sent (oldest first)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: list[str] = []

    def prefix(self) -> str:
        """The pending savepoints as a query-string prefix; they count as sent from now
        (a statement that fails after them leaves them established: ROLLBACK TO works)."""
        sql = "".join(f"SAVEPOINT {name}; " for name in self.pending)
        self.pending.clear()
        return sql

    def drop(self, name: str) -> bool:
        """Forget ``name`` (and those begun after it) if still pending: True if it was."""
        if name not in self.pending:
            return False
        del self.pending[self.pending.index(name):]
        return True


def mark(connection: Connection) -> None:
    """Treat ``connection``'s savepoints as above until :func:`unmark` (the message's
    transaction must end with its COMMIT or ROLLBACK)."""
    install(connection.engine)
    setattr(connection, _STATE, _Savepoints())


def unmark(connection: Connection) -> None:
    """Back to SQLAlchemy's savepoints; a savepoint still pending is dropped (nothing
    ran in it)."""
    if getattr(connection, _STATE, None) is not None:
        setattr(connection, _STATE, None)


def _state(connection: Any) -> _Savepoints | None:
    state: _Savepoints | None = getattr(connection, _STATE, None)
    return state


def install(engine: Engine) -> None:
    """Hook ``engine``'s dialect (once): marked connections skip RELEASE, and on psycopg2
    defer SAVEPOINT to their next statement."""
    dialect = engine.dialect
    if getattr(dialect, _INSTALLED, False):
        return
    with _INSTALL_LOCK:  # two first requests at once must not wrap the hooks twice
        if not getattr(dialect, _INSTALLED, False):
            _install(dialect)


def _install(dialect: Any) -> None:
    fuse = dialect.driver == "psycopg2"
    savepoint: Callable[[Any, str], None] = dialect.do_savepoint
    release: Callable[[Any, str], None] = dialect.do_release_savepoint
    rollback_to: Callable[[Any, str], None] = dialect.do_rollback_to_savepoint
    execute: Callable[..., None] = dialect.do_execute
    execute_no_params: Callable[..., None] = dialect.do_execute_no_params
    executemany: Callable[..., None] = dialect.do_executemany

    def do_savepoint(connection: Any, name: str) -> None:
        state = _state(connection)
        if state is None or not fuse:
            savepoint(connection, name)
        else:
            state.pending.append(name)

    def do_release_savepoint(connection: Any, name: str) -> None:
        state = _state(connection)
        if state is None:
            release(connection, name)
        else:
            state.drop(name)  # released or never sent: COMMIT / ROLLBACK decides

    def do_rollback_to_savepoint(connection: Any, name: str) -> None:
        state = _state(connection)
        if state is None or not state.drop(name):
            rollback_to(connection, name)

    def pending_prefix(cursor: Any, context: Any, *, alone: bool = False) -> str:
        """The pending savepoints to put before the statement ('' if none); sent in a
        round trip of their own when they cannot share it (``alone``: an executemany,
        which would repeat them per parameter set; a server-side cursor's DECLARE)."""
        state = _state(getattr(context, "root_connection", None))
        if state is None or not state.pending:
            return ""
        prefix = state.prefix()
        if alone or getattr(context, "_is_server_side", False):
            plain = cursor.connection.cursor()
            try:
                plain.execute(prefix)
            finally:
                plain.close()
            return ""
        return prefix

    def do_execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        execute(cursor, pending_prefix(cursor, context) + statement, parameters, context)

    def do_execute_no_params(cursor: Any, statement: str, context: Any = None) -> None:
        execute_no_params(cursor, pending_prefix(cursor, context) + statement, context)

    def do_executemany(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        pending_prefix(cursor, context, alone=True)
        executemany(cursor, statement, parameters, context)

    hooks: dict[str, Callable[..., None]] = {
        "do_savepoint": do_savepoint,
        "do_release_savepoint": do_release_savepoint,
        "do_rollback_to_savepoint": do_rollback_to_savepoint,
    }
    if fuse:
        hooks.update(do_execute=do_execute, do_execute_no_params=do_execute_no_params,
                     do_executemany=do_executemany)
    for name, hook in hooks.items():
        # An instance attribute: this engine's dialect only (every engine makes its own).
        setattr(dialect, name, hook)
    setattr(dialect, _INSTALLED, True)
