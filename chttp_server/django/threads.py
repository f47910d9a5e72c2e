"""A certified request's statements run in its own thread, or are refused.

Django keeps one connection per thread and alias, and the message's transaction is the
connection of the thread the middleware runs in (:mod:`chttp_server.django.connection`).
Under WSGI the view runs in that thread. Under ASGI (``get_asgi_application()``)
Django's handler gives each request one thread for its sync code
(``asgiref.sync.ThreadSensitiveContext``): the middleware, sync views, and every
``sync_to_async(thread_sensitive=True)`` call an async view makes — Django's async ORM
(``acreate``, ``aget``, ``async for``) included — run there, on the message's
connection. Only code that leaves that thread on purpose (``sync_to_async(...,
thread_sensitive=False)``, ``asyncio.to_thread``) reaches the database through another
connection, in autocommit: its writes would commit even when the view then fails and
its retry runs them again.

So while a certified view runs, a statement on the message's alias from any other
thread that carries the request's context is refused with
:class:`~chttp_server.errors.StatementOutsideMessage` before it executes (an
``execute_wrapper`` on every connection of the alias, installed as Django opens it).
The context travels with ``sync_to_async`` and ``asyncio.to_thread``; a thread started
by hand (``threading.Thread``, ``loop.run_in_executor``) carries none and is not seen.

The same hook refuses, on SQLite, a statement of the view's own thread once the view
has ended the message's transaction itself (``cursor.execute("COMMIT")``): Django runs
the sqlite3 driver in autocommit and says ``BEGIN`` itself, so every later statement
would commit on its own (PostgreSQL's drivers get the same refusal from
:func:`chttp_server.fused_transaction.guard`). The view fails with
:class:`~chttp_server.errors.HandlerEndedTransaction`; nothing more is written.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from chttp_server.errors import HandlerEndedTransaction, StatementOutsideMessage

__all__ = ["install", "message_thread"]

#: (alias, thread id) of the certified request running in this context, if any.
_OWNER: ContextVar[tuple[str, int] | None] = ContextVar("chttp_django_message_thread", default=None)


@contextmanager
def message_thread(alias: str) -> Iterator[None]:
    """While inside, statements on ``alias`` belong to this thread's connection only."""
    token = _OWNER.set((alias, threading.get_ident()))
    try:
        yield
    finally:
        _OWNER.reset(token)


def install(alias: str) -> None:
    """Guard every connection of ``alias`` opened from now on (and this thread's own)."""
    connection_created.connect(_guard_new_connection, dispatch_uid="chttp_server.django.threads")
    _add_guard(connections[alias])


def _guard_new_connection(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    _add_guard(connection)


def _add_guard(connection: BaseDatabaseWrapper) -> None:
    # First, not last: ``connection.execute_wrapper(w)`` pops the *last* wrapper when its
    # block ends, and a connection opened inside such a block gets its guard there.
    if _refuse_foreign_threads not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, _refuse_foreign_threads)


def _refuse_foreign_threads(execute: Callable[..., Any], sql: str, params: Any, many: bool,
                            context: dict[str, Any]) -> Any:
    """Django's ``execute_wrapper`` hook: one context-variable read per statement (and,
    in a certified view on SQLite, one look at the driver's transaction state)."""
    owner = _OWNER.get()
    if owner is not None:
        connection = context["connection"]
        if connection.alias == owner[0]:
            if owner[1] != threading.get_ident():
                raise StatementOutsideMessage(connection.alias)
            if connection.vendor == "sqlite" and not connection.connection.in_transaction:
                raise HandlerEndedTransaction(_ENDED)
    return execute(sql, params, many, context)


_ENDED = ("chttp: the certified request's transaction was ended (COMMIT / ROLLBACK sent "
          "by the view); this statement would run outside it and was not sent")
