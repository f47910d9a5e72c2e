"""The escrow's rules once, for two front ends: SQL steps and their two executors.

The example runs its services through WSGI (waitress) or ASGI (uvicorn, ``chttp-server
demo --asgi``). What a ledger does with a withdraw, what accepting or claiming a
transfer writes, what the driver sends in which order: each is written *once*, as a
generator that yields what it needs done and receives the result — the shape of the
library's own core (``chttp_client.effects``; DESIGN.md "One transaction core for sync
and async"). Two copies of the rules, one with ``await`` in it, would drift, and the
audit would then be checking two different programs.

Here: a rule that touches the database yields SQLAlchemy statements and receives their
(buffered) ``Result``; :func:`run_sql` executes them on a ``Connection``,
:func:`run_sql_async` on an ``AsyncConnection`` — the message's own transaction inside a
certified request. The driver's effects (certified sends, persisted state writes) are
in :mod:`~chttp_examples.escrow.escrow` beside the rule that yields them.

Errors a rule raises are the front ends' to render: :class:`BadRequest` is 400,
:class:`NotFound` 404.
"""

from __future__ import annotations

from typing import Any, Generator, TypeVar

from sqlalchemy import Connection, Executable
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["SqlSteps", "BadRequest", "NotFound", "run_sql", "run_sql_async"]

T = TypeVar("T")

#: A rule: yields statements, receives each one's ``Result`` (buffered), returns ``T``.
SqlSteps = Generator[Executable, Any, T]


class BadRequest(ValueError):
    """The request is not one the service accepts (400); the text says why."""


class NotFound(LookupError):
    """No such account or transfer (404)."""


def run_sql(steps: SqlSteps[T], connection: Connection) -> T:
    """Drive ``steps`` on a synchronous connection; return what the rule returns."""
    result: Any = None
    while True:
        try:
            statement = steps.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value
        result = connection.execute(statement)


async def run_sql_async(steps: SqlSteps[T], connection: AsyncConnection) -> T:
    """Drive ``steps`` on an ``AsyncConnection`` (its results come back buffered)."""
    result: Any = None
    while True:
        try:
            statement = steps.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value
        result = await connection.execute(statement)
