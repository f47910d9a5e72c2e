"""SQLAlchemy over Django's own connection: the store's statements in Django's transaction.

The message store speaks SQLAlchemy Core (:mod:`chttp_server.store`); a Django view
writes through the ORM on Django's connection. For the view's writes and the stored
response to commit as one (docs/protocol.rst §2) they must share one DB-API connection
and one transaction, and that transaction must be Django's: the view may open
``transaction.atomic()`` blocks of its own, and ``transaction.on_commit`` hooks must
fire when the message commits.

So the store gets an :class:`~sqlalchemy.Engine` (:func:`django_engine`) whose pool
never opens a connection of its own. Each checkout hands out the DB-API connection of
the current thread's Django connection for the alias (``connections[alias].connection``,
opened by Django if needed), and:

* **never closes it** — returning it to the pool does nothing, and an invalidated one
  (a statement lost the server) is only marked ``errors_occurred`` so that Django closes
  it at the end of the request, as it does after its own failures;
* **never ends a transaction** — the engine's dialect does not commit or roll back
  (nor reset on return): ``transaction.atomic(using=alias)``, entered by the middleware
  around the claim, the view and the stored response, decides. A SQLAlchemy
  ``Connection`` closed inside the block leaves Django's transaction as it was;
* **never reconfigures it** — the dialect's per-connection hooks (SQLAlchemy would
  register its own ``regexp`` function on SQLite, replacing Django's) are not run; the
  dialect reads the server's version once (:func:`initialize`), without a rollback.
  On SQLite, Django's connection converts DATETIME columns itself (``detect_types``),
  so the engine's DATETIME type takes the converted values as they come.

Every thread has its own Django connection, so every thread gets its own DB-API
connection from this pool, exactly as the ORM does. Django opens connections lazily: a
database that is down raises Django's ``OperationalError`` from ``atomic()`` or from a
checkout; :func:`django_errors` turns both into :class:`~chttp_core.errors.StoreUnreachable`,
which the receiver's one mapping (:func:`chttp_server.transaction.store_errors`) answers
with 503 ``store-unavailable``.

The journal for a view's own certified sends must commit *outside* the request's
transaction, so it never uses this engine: :func:`separate_engine` opens connections of
its own with Django's connection parameters.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator, cast

from django.db import connections
from django.db import utils as django_db
from sqlalchemy import DateTime, Engine, create_engine
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

from chttp_core.errors import StoreUnreachable

__all__ = [
    "django_engine", "initialize", "django_errors", "lost_connection", "separate_engine", "VENDORS",
]

#: The Django backends (``connection.vendor``) the store supports.
VENDORS = ("sqlite", "postgresql")

_INITIALIZED_LOCK = threading.Lock()
_ENGINES_LOCK = threading.Lock()
#: django_engine's engines by (alias, SQLAlchemy URL).
_ENGINES: dict[tuple[str, str], Engine] = {}


class _DjangoConnectionPool(Pool):
    """A pool whose every checkout is the current thread's Django DB-API connection."""

    #: Its records live exactly as long as their DB-API connections (:meth:`_do_get`),
    #: like those of SQLAlchemy's own pools, so a statement prepared on one stays known
    #: in its ``info`` (:func:`chttp_server.store_dbapi.prepares`).
    keeps_records = True

    def __init__(self, alias: str, **options: Any) -> None:
        self.alias = alias
        options.setdefault("reset_on_return", None)
        super().__init__(self._django_connection, **options)
        # Django's connections are per thread, so are the records that wrap them.
        self._local = threading.local()

    def _django_connection(self) -> DBAPIConnection:
        wrapper = connections[self.alias]
        try:
            wrapper.ensure_connection()
        except django_db.Error as exc:
            # Django re-raises the driver's error as its own class; SQLAlchemy classifies
            # (and the store maps) the driver's, which Django keeps as the cause.
            cause = exc.__cause__
            raise (cause if isinstance(cause, Exception) else exc) from None
        return cast(DBAPIConnection, wrapper.connection)

    def _do_get(self) -> ConnectionPoolEntry:
        """This thread's pool record, made anew only when Django's connection changed.

        A record per checkout cost a record, its ``connect`` events and its ``info`` on
        every request; one kept as long as its DB-API connection also keeps ``info``
        (what :mod:`chttp_server.store_dbapi` has prepared on it) for that connection's
        life, as SQLAlchemy's own pools do. Django reopened (or closed after a
        failure) the connection: the old record belongs to a closed connection and is
        replaced.
        """
        current = self._django_connection()
        record: ConnectionPoolEntry | None = getattr(self._local, "record", None)
        if record is None or record.dbapi_connection is not current:
            record = self._create_connection()
            self._local.record = record
        return record

    def _invalidate(self, connection: PoolProxiedConnection, exception: BaseException | None = None,
                    _checkin: bool = True) -> None:
        """Invalidate the failed connection only, never "every connection made before now".

        SQLAlchemy's pools treat a disconnect as news about all their connections and
        recycle every older record on its next checkout. Here every thread's
        connection is Django's own and Django checks it after a failure; recycling a
        healthy one would only forget what its record knows (``info``: the statements
        prepared on it, which the session still has, so preparing again would fail).
        """
        if _checkin and connection.is_valid:
            connection.invalidate(exception)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        """Nothing: the connection stays Django's."""

    def _close_connection(self, connection: DBAPIConnection, *, terminate: bool = False) -> None:
        """Never close Django's connection; after a failure let Django check and close it."""
        wrapper = connections[self.alias]
        if wrapper.connection is connection:
            wrapper.errors_occurred = True

    def status(self) -> str:
        return f"DjangoConnectionPool({self.alias!r})"

    def dispose(self) -> None:
        """Nothing to dispose: no connection belongs to this pool."""

    def recreate(self) -> _DjangoConnectionPool:
        return self.__class__(self.alias, _dispatch=self.dispatch, dialect=self._dialect)


def _leave_transactions_to_django(dbapi_connection: DBAPIConnection) -> None:
    """The dialect's commit and rollback: Django's ``atomic`` ends the transaction."""


def django_engine(alias: str) -> Engine:
    """The engine whose connections are Django's connection for ``alias`` (see above).

    One per alias (and driver) in a process, however many middleware instances ask
    (Django's test ``Client`` builds its own handler, so its own middleware, per
    client): every thread has one Django connection per alias, so it must have one pool
    record for it too, or what one record knows about the session (the statements
    prepared on it) would be unknown to another's, which would prepare them again.
    """
    wrapper = connections[alias]
    if wrapper.vendor not in VENDORS:
        raise ValueError(f"unsupported Django backend {wrapper.vendor!r}")
    if wrapper.vendor == "sqlite":
        url = "sqlite+pysqlite://"
    else:
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        url = "postgresql+psycopg://" if is_psycopg3 else "postgresql+psycopg2://"
    with _ENGINES_LOCK:
        engine = _ENGINES.get((alias, url))
        if engine is None:
            engine = _ENGINES[(alias, url)] = _new_engine(alias, url, wrapper.vendor)
    return engine


def _new_engine(alias: str, url: str, vendor: str) -> Engine:
    # _initialize=False: no per-connection hooks and no first-connect rollback; the
    # dialect is initialised by initialize() instead.
    engine = create_engine(url, pool=_DjangoConnectionPool(alias), _initialize=False)
    # Replacing the dialect's methods on this one engine is the point; the stubs
    # declare them as methods, not assignable attributes.
    engine.dialect.do_commit = _leave_transactions_to_django  # type: ignore[method-assign]
    engine.dialect.do_rollback = _leave_transactions_to_django  # type: ignore[method-assign]
    if vendor == "sqlite":
        # Django opens SQLite with detect_types: its converters already turn DATETIME
        # columns into datetimes, which SQLAlchemy's string parser would reject.
        engine.dialect.colspecs = {**engine.dialect.colspecs, DateTime: _ConvertedDateTime}
    return engine


class _ConvertedDateTime(sqlite.DATETIME):
    """SQLite DATETIME that accepts a value Django's converter already parsed."""

    def result_processor(self, dialect: Any, coltype: object) -> Any:
        parse = super().result_processor(dialect, coltype)

        def process(value: Any) -> Any:
            if value is None or isinstance(value, datetime):
                return value
            return parse(value) if parse is not None else value

        return process


def initialize(engine: Engine) -> None:
    """Let the dialect read the server's version and settings, once per engine.

    Harmless inside a transaction: these are reads, and the engine never rolls back.
    """
    with _INITIALIZED_LOCK:
        if engine.dialect.server_version_info is not None:
            return
        with engine.connect() as connection:
            engine.dialect.initialize(connection)


@contextmanager
def django_errors() -> Iterator[None]:
    """Django's "the database cannot be reached" errors as :class:`StoreUnreachable`.

    ``OperationalError`` and ``InterfaceError`` from Django's own calls (opening the
    connection in ``atomic()``, committing at its end) mean the same as they do for the
    store's statements (:func:`chttp_core.db.is_disconnect`): a dropped or refused
    connection, or SQLite's busy timeout.
    """
    try:
        yield
    except (django_db.OperationalError, django_db.InterfaceError) as exc:
        text = str(exc).strip()
        raise StoreUnreachable(text.splitlines()[0] if text else type(exc).__name__) from exc


def lost_connection(alias: str) -> None:
    """Raise :class:`StoreUnreachable` if the view's failure was the connection's loss.

    Django turns a view's exception into a 500 before the middleware sees it, so a
    statement that lost the server under the view looks like any other failure. The
    driver knows better: a psycopg connection whose server went away is ``closed``. The
    WSGI middleware answers that case 503 ``store-unavailable``; so does this one.
    """
    raw = connections[alias].connection
    if raw is not None and getattr(raw, "closed", False):
        raise StoreUnreachable("the database connection was lost while the view ran")


def separate_engine(alias: str) -> Engine:
    """An engine with connections of its own to ``alias``'s PostgreSQL database.

    For the journal of views' certified sends, which commits outside the request's
    transaction. Made from Django's own connection parameters, so it reaches the same
    database however the project configured it.
    """
    wrapper = connections[alias]
    if wrapper.vendor != "postgresql":
        raise ValueError("a separate engine is made for PostgreSQL only")
    params = dict(wrapper.get_connection_params())
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(django_only, None)
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if is_psycopg3:
        import psycopg

        return create_engine("postgresql+psycopg://", pool_pre_ping=True,
                             creator=lambda: psycopg.connect(**params))
    import psycopg2

    return create_engine("postgresql+psycopg2://", pool_pre_ping=True,
                         creator=lambda: psycopg2.connect(**params))
