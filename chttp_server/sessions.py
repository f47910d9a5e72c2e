"""The application's own SQLAlchemy sessions, joined to the certified request's transaction.

Exactly-once must reach the code people already wrote (docs/protocol.rst §2): a view
that does ``session = Session(); session.add(order); session.commit()`` on its own
``sessionmaker`` or ``scoped_session`` commits on a connection of its own, before the
response is stored — a crash between the two commits, or a view that fails after its
commit, and the retry writes a second order. (On SQLite it is worse: the message's
transaction holds the write lock, and the view's commit waits for it until it fails.)

:func:`join` fixes that for a session factory, once, at start-up::

    Session = sessionmaker(bind=engine)
    app = CertifiedMiddleware(wsgi_app, engine=engine, sessions=Session)  # calls join()

Afterwards, while a certified request runs (inside :func:`joined`, which the front ends
enter around the handler), every session made by that factory — or already made —
runs its statements on the message's connection instead of a connection of its own,
inside a SAVEPOINT (``join_transaction_mode="create_savepoint"``): the view's
``commit()`` ends the savepoint, its ``rollback()`` undoes only its own work, and
nothing is durable until the message's transaction commits with the stored response.
(The savepoint costs no round trip of its own: :mod:`chttp_server.savepoints`.)
When the handler ends the sessions it used are closed, so work it never committed is
discarded, as it would have been without chttp. Outside certified requests the
sessions behave exactly as before.

The ASGI front end does the same for an ``async_sessionmaker`` (or ``async_scoped_session``):
its ``AsyncSession`` s wrap synchronous sessions of ``sync_session_class``, and that
class is the one replaced, so ``await session.commit()`` releases the savepoint on the
message's connection. There the front end enters the join with :func:`enter` and leaves
it in two steps: :meth:`RequestJoin.end` (no I/O: later sessions, e.g. those of
background tasks that run after the commit, get their own connections again) and
:meth:`RequestJoin.close_sessions` (I/O, run through the async executor).

How: the factory's session class is replaced by a subclass whose ``get_bind`` answers
the request's connection when the bind it would have chosen is on the store's
database; binds on other databases are left alone (they are not covered). The
current request is a :class:`contextvars.ContextVar`, so threads and asyncio tasks
never see each other's connection.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, Iterator

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from chttp_server import savepoints
from chttp_server.errors import ConfigurationError

__all__ = ["RequestJoin", "enter", "join", "joined", "same_database"]

_JOINED_MARK = "_chttp_joined"


class RequestJoin:
    """The certified request now running in this context: its connection and sessions."""

    __slots__ = ("connection", "engine", "sessions", "ended", "_token")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.engine = connection.engine
        self.sessions: list[Session] = []
        #: True once the handler's part is over: sessions stop joining the message.
        self.ended = False
        self._token: Token[RequestJoin | None] | None = None

    def end(self) -> None:
        """Stop joining (no I/O): from now on sessions get their own connections."""
        self.ended = True

    def close_sessions(self) -> None:
        """Close the sessions the handler used: rolls back a savepoint it never committed.

        Afterwards the connection's savepoints are SQLAlchemy's again
        (:mod:`chttp_server.savepoints`): the handler's part is over.
        """
        sessions, self.sessions = self.sessions, []
        try:
            for session in sessions:
                session.close()
        finally:
            savepoints.unmark(self.connection)

    def leave(self) -> None:
        """Forget this request in the context that entered it (after :meth:`end`)."""
        self.ended = True
        if self._token is not None:
            token, self._token = self._token, None
            _current.reset(token)


_current: ContextVar[RequestJoin | None] = ContextVar("chttp_joined_request", default=None)


def enter(connection: Connection) -> RequestJoin:
    """Join sessions of joined factories to ``connection`` in this context until
    :meth:`RequestJoin.end` / :meth:`RequestJoin.leave` (the async front end's form of
    :func:`joined`)."""
    join_ = RequestJoin(connection)
    savepoints.mark(connection)
    join_._token = _current.set(join_)
    return join_


def same_database(one: Engine | URL, other: Engine | URL) -> bool:
    """True if two engines (or URLs) reach the same database, whatever the driver name."""
    first = one.url if isinstance(one, Engine) else one
    second = other.url if isinstance(other, Engine) else other
    if first.get_backend_name() != second.get_backend_name():
        return False
    if first.get_backend_name() == "sqlite":
        return _sqlite_file(first) == _sqlite_file(second)
    return (first.host or "localhost", first.port, first.database, first.username) == (
        second.host or "localhost", second.port, second.database, second.username)


def _sqlite_file(url: URL) -> str | None:
    if url.database in (None, "", ":memory:"):
        return None  # every in-memory database is its own: never "the same"
    return os.path.realpath(url.database)


def join(factory: Any, *, store: Engine) -> None:
    """Make ``factory``'s sessions join certified requests on the ``store`` engine's database.

    ``factory``: a ``sessionmaker`` or ``scoped_session`` (the synchronous front ends),
    an ``async_sessionmaker`` or ``async_scoped_session`` (the ASGI front end).
    Raises :class:`ConfigurationError` when the factory is bound to another database:
    its writes could never commit with the stored response.
    """
    async_maker = _async_maker(factory)
    if async_maker is not None:
        _check_bind(_sync_bind(async_maker.kw.get("bind")), store)
        sync_class = async_maker.kw.get("sync_session_class", Session)
        if not getattr(sync_class, _JOINED_MARK, False):
            async_maker.kw["sync_session_class"] = _joined_class(sync_class)
        return
    maker = factory.session_factory if isinstance(factory, scoped_session) else factory
    if not isinstance(maker, sessionmaker):
        raise ConfigurationError(
            "sessions= takes a sqlalchemy.orm.sessionmaker or scoped_session (or, for the "
            f"ASGI front end, an async_sessionmaker), not {type(factory).__name__}"
        )
    _check_bind(maker.kw.get("bind"), store)
    if not getattr(maker.class_, _JOINED_MARK, False):
        maker.class_ = _joined_class(maker.class_)


def _async_maker(factory: Any) -> Any:
    """The ``async_sessionmaker`` behind ``factory``, or None for a synchronous factory."""
    try:
        from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker
    except ImportError:  # pragma: no cover - SQLAlchemy without its asyncio extension
        return None
    if isinstance(factory, async_scoped_session):
        factory = factory.session_factory
    return factory if isinstance(factory, async_sessionmaker) else None


def _sync_bind(bind: Any) -> Any:
    """An ``AsyncEngine`` / ``AsyncConnection`` bind as its synchronous engine."""
    sync_engine = getattr(bind, "sync_engine", None)
    return sync_engine if sync_engine is not None else bind


def _check_bind(bind: Any, store: Engine) -> None:
    if isinstance(bind, Connection):
        bind = bind.engine
    if isinstance(bind, Engine) and not same_database(bind, store):
        raise ConfigurationError(
            f"the session factory is bound to {bind.url.render_as_string()!r} but messages "
            f"are stored in {store.url.render_as_string()!r}: its writes could not commit "
            "with the stored response. Store the messages in the application's database "
            "(engine= the application's engine)"
        )


@contextmanager
def joined(connection: Connection) -> Iterator[None]:
    """While the handler runs: joined sessions use ``connection``; closed when it ends."""
    join_ = enter(connection)
    try:
        yield
    finally:
        join_.leave()
        # Rolls back a session's savepoint if the handler never committed it.
        join_.close_sessions()


def _joined_class(base: type[Session]) -> type[Session]:
    """A subclass of ``base`` whose binds on the store's database become the request's."""

    # A base chosen at run time (the host's Session subclass) is beyond mypy's checks.
    class JoinedSession(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("join_transaction_mode", "create_savepoint")
            super().__init__(*args, **kwargs)

        def get_bind(self, *args: Any, **kwargs: Any) -> Engine | Connection:
            chosen: Engine | Connection = super().get_bind(*args, **kwargs)
            request = _current.get()
            if request is None or request.ended:
                return chosen
            engine = chosen.engine if isinstance(chosen, Connection) else chosen
            if engine is not request.engine and not same_database(engine, request.engine):
                return chosen
            if self not in request.sessions:
                request.sessions.append(self)
            return request.connection

    setattr(JoinedSession, _JOINED_MARK, True)
    JoinedSession.__name__ = base.__name__
    JoinedSession.__qualname__ = base.__qualname__
    JoinedSession.__module__ = base.__module__
    return JoinedSession
