"""What the receiver makes of a database error: one classification, two layers.

* :func:`unreachable_as_store_error` wraps every statement the store runs
  (:mod:`chttp_server.store`): an error that means the store cannot be reached becomes
  :class:`~chttp_core.errors.StoreUnreachable`; any other propagates as it is.
* :func:`store_errors` wraps every step of a message's transaction
  (:mod:`chttp_server.transaction`, and the front ends around it): it turns the store's
  failures into the protocol's answers (docs/protocol.rst §4) — the only place that does.

They live apart from the store and the transaction because every front end needs the
second and the store the first, while neither needs the other's statements or steps.
Both are classes, not ``@contextmanager`` s: they wrap every statement and step of every
request, and a generator-based manager costs several microseconds per use.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Callable

from sqlalchemy import exc as sa_exc

from chttp_core import migrate
from chttp_core.db import is_disconnect, is_driver_disconnect
from chttp_core.errors import ClaimTimedOut, SchemaOutOfDateError, StoreUnreachable
from chttp_server.claim_guard import refused_as_ended
from chttp_server.errors import (
    HandlerEndedTransaction,
    MessageInProgress,
    ProtocolError,
    StoreUnavailable,
)

__all__ = ["store_errors", "unreachable_as_store_error", "first_line", "ENDED"]

log = logging.getLogger("chttp_server")

class _UnreachableAsStoreError:
    """The context manager behind :func:`unreachable_as_store_error` (stateless, reentrant).

    A class rather than ``@contextmanager``: it wraps every statement of every request,
    and a generator-based manager costs several microseconds per use.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if exc is not None and is_disconnect(exc):
            raise StoreUnreachable(first_line(exc)) from exc
        return None


_UNREACHABLE = _UnreachableAsStoreError()


def unreachable_as_store_error() -> AbstractContextManager[None]:
    """Raise :class:`StoreUnreachable` for an error that means the store cannot be reached.

    One classification for every statement the store runs (:func:`chttp_core.db.is_disconnect`:
    a dropped or refused connection, an exhausted pool, SQLite's busy timeout); any other
    database error is a real error of the statement and propagates unchanged.
    """
    return _UNREACHABLE


ENDED = ("the handler committed or rolled back the certified request's transaction; "
          "nothing was stored (use connection.begin_nested() to undo part of it)")


def store_errors(*, retry_after: int, message_id: str | None = None,
                 lost: Callable[[], bool] | None = None) -> AbstractContextManager[None]:
    """Turn the store's failures into the answers of docs/protocol.rst §4. The only place.

    * :class:`StoreUnreachable`, or a SQLAlchemy error whose connection was invalidated
      (whoever ran the statement: the handler's statements share the connection), or a
      pool that cannot hand one out → 503 ``store-unavailable`` + ``Retry-After``;
    * what a dead connection raises *after* it died, → the same 503: SQLAlchemy's
      ``PendingRollbackError``, ``ResourceClosedError`` or any ``InvalidRequestError``
      ("inactive transaction", "can't reconnect until invalid transaction is rolled
      back") when ``lost()`` says the message's connection is gone or the error was
      raised from a disconnect; a driver's own disconnect error that SQLAlchemy never
      saw (psycopg 3, psycopg2, asyncpg: :func:`chttp_core.db.is_driver_disconnect`).
      The same ``InvalidRequestError`` on a live connection is the application's bug
      and propagates;
    * :class:`SchemaOutOfDateError` (met after start-up) → 503 naming the command;
    * :class:`ClaimTimedOut` → 409 ``message-in-progress`` + ``Retry-After``.

    The 503's detail stays generic: the driver's message names hosts, ports and
    database states, so it goes to the log only. The returned manager is stateless and
    may be entered again and again (a transaction keeps one).
    """
    return _StoreErrors(retry_after, message_id, lost)


class _StoreErrors:
    """:func:`store_errors` as a class: it wraps every step of every request, and a
    generator-based ``@contextmanager`` costs several microseconds per use."""

    __slots__ = ("retry_after", "message_id", "lost")

    def __init__(self, retry_after: int, message_id: str | None,
                 lost: Callable[[], bool] | None = None) -> None:
        self.retry_after = retry_after
        self.message_id = message_id
        self.lost = lost

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if exc is None or isinstance(exc, ProtocolError):
            return None
        if isinstance(exc, sa_exc.DBAPIError) and refused_as_ended(exc):
            # A statement refused because the handler ended the message's transaction.
            raise HandlerEndedTransaction(ENDED) from exc
        if isinstance(exc, StoreUnreachable):
            reason = exc.reason
        elif isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
            reason = str(exc)
        elif isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            reason = f"connection lost: {str(exc.orig).strip()}"
        elif isinstance(exc, sa_exc.InvalidRequestError) and self._after_loss(exc):
            reason = f"connection lost earlier: {type(exc).__name__}: {first_line(exc)}"
        elif not isinstance(exc, sa_exc.SQLAlchemyError) and is_driver_disconnect(exc):
            reason = f"connection lost: {type(exc).__name__}: {first_line(exc)}"
        elif isinstance(exc, SchemaOutOfDateError):
            log.error("chttp: %s", exc)
            raise StoreUnavailable(
                f"the chttp schema is behind this code; run `{migrate.UPGRADE_COMMAND}`",
                retry_after=self.retry_after, message_id=self.message_id,
            ) from exc
        elif isinstance(exc, ClaimTimedOut):
            raise MessageInProgress(
                f"another request with this id is still being processed after {exc.waited:g}s",
                message_id=exc.message_id, retry_after=exc.retry_after,
            ) from exc
        else:
            return None
        log.warning("chttp message store unavailable (message %r): %s", self.message_id, reason)
        raise StoreUnavailable(retry_after=self.retry_after, message_id=self.message_id) from exc

    def _after_loss(self, exc: sa_exc.InvalidRequestError) -> bool:
        """True if this misuse error is the echo of a connection that died before it."""
        if "can't reconnect until invalid" in str(exc).lower():
            return True  # SQLAlchemy says it: the connection was invalidated
        return (self.lost is not None and self.lost()) or is_driver_disconnect(exc)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a driver's error can run to many), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
