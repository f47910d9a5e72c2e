"""Errors of the foundation, shared by both halves and free of WebOb.

::

    ChttpError                        root of every error this project raises
     └── SchemaOutOfDateError         the database is not at this code's migration head

``chttp_server.ChttpServerError`` and ``chttp_client.ChttpClientError`` both derive
from :class:`ChttpError`, so ``except ChttpError`` catches anything the library raises.
"""

from __future__ import annotations

__all__ = ["ChttpError", "SchemaOutOfDateError"]


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
