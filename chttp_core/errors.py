"""Errors of the foundation, shared by both halves and free of WebOb.

::

    ChttpError                        root of every error this project raises
     ├── SchemaOutOfDateError         the database is not at this code's migration head
     ├── ForeignSchemaError           chttp_ tables that chttp's migrations did not make
     ├── StoreURLError                a store URL that cannot work (also a ValueError)
     └── StoreError                   a store could not do what was asked (no HTTP in it)
          ├── StoreUnreachable        the database cannot be reached or would not answer
          ├── ClaimTimedOut           a message key stayed claimed by another transaction
          └── ClaimLost               the claiming transaction ended before the response was stored

``chttp_server.ChttpServerError`` and ``chttp_client.ChttpClientError`` both derive
from :class:`ChttpError`, so ``except ChttpError`` catches anything the library raises.

The store errors say what went wrong in the database's terms; the receiver turns them
into HTTP answers in exactly one place (``chttp_server.transaction.store_errors``), so
the stores stay free of WebOb and of any front end.
"""

from __future__ import annotations

__all__ = ["ChttpError", "SchemaOutOfDateError", "ForeignSchemaError", "StoreURLError", "StoreError",
           "StoreUnreachable", "ClaimTimedOut", "ClaimLost"]


class ChttpError(Exception):
    """Root of every error raised by certified-http."""


class SchemaOutOfDateError(ChttpError):
    """The database's chttp tables are not at the revision this code needs."""

    def __init__(self, current: str | None, head: str, command: str) -> None:
        super().__init__(current, head, command)
        self.current = current
        self.head = head
        self.command = command

    def __str__(self) -> str:
        found = self.current or "no chttp tables"
        return (
            f"the chttp schema is at {found!s}, this code needs {self.head}; "
            f"run `{self.command}` (or chttp_core.migrate.upgrade(...)) first"
        )


class ForeignSchemaError(ChttpError):
    """The database holds ``chttp_`` tables but no chttp version: someone else's tables.

    Upgrading over them would fail half-way or, worse, adopt tables of another shape;
    :func:`chttp_core.migrate.upgrade` refuses instead, after taking its lock (so a
    concurrent first upgrade is never mistaken for foreign tables).
    """

    def __init__(self, tables: list[str]) -> None:
        super().__init__(tables)
        self.tables = tables

    def __str__(self) -> str:
        return (f"the database already has {', '.join(self.tables)} but no chttp version "
                "table row: these tables were not made by chttp's migrations")


class StoreURLError(ChttpError, ValueError):
    """A database URL that cannot name a store: a misspelled scheme, a missing driver,
    directory or SQLite file (:mod:`chttp_core.store_urls`). ``message`` says what is
    wrong, ``hint`` what to do; ``url`` is the URL as it is safe to print (no password),
    ``path`` the SQLite file when one is involved."""

    def __init__(self, message: str, hint: str, *, url: str, path: str | None = None) -> None:
        super().__init__(message, hint)
        self.message = message
        self.hint = hint
        self.url = url
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_store_url_error, (self.message, self.hint, self.url, self.path))

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})"


def _rebuild_store_url_error(message: str, hint: str, url: str, path: str | None) -> StoreURLError:
    return StoreURLError(message, hint, url=url, path=path)


class StoreError(ChttpError):
    """A store could not carry out an operation; nothing it was asked to do happened."""


class StoreUnreachable(StoreError):
    """The database cannot be reached, dropped the connection, or is busy past its bound.

    ``reason`` is the driver's first line: for the server's log, never for the wire
    (it names hosts, ports and database states; docs/protocol.rst §4).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClaimTimedOut(StoreError):
    """Another transaction kept a message key claimed longer than the claim timeout."""

    def __init__(self, message_id: str, waited: float, retry_after: int) -> None:
        super().__init__(message_id, waited, retry_after)
        self.message_id = message_id
        self.waited = waited
        self.retry_after = retry_after

    def __str__(self) -> str:
        return (f"message {self.message_id!r} is still being processed by another "
                f"transaction after {self.waited:g}s")


class ClaimLost(StoreError):
    """The transaction that claimed a message is no longer the one open on its connection.

    Something other than the store committed or rolled it back — in practice the
    handler, through the connection's ``commit()`` / ``rollback()`` or by sending
    ``COMMIT`` / ``ROLLBACK`` / ``END`` as SQL. Storing the response now would store it
    in another transaction than the claim's, so the store refused and stored nothing
    (``chttp_server.HandlerEndedTransaction`` says so to the receiver).
    """

    def __init__(self, message_id: str, how: str) -> None:
        super().__init__(message_id, how)
        self.message_id = message_id
        self.how = how

    def __str__(self) -> str:
        return f"message {self.message_id!r}: the claiming transaction is gone ({self.how})"
