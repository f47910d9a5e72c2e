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
``commit()`` releases the savepoint, its ``rollback()`` undoes only its own work, and
nothing is durable until the message's transaction commits with the stored response.
When the handler ends the sessions it used are closed, so work it never committed is
discarded, as it would have been without chttp. Outside certified requests the
sessions behave exactly as before.

How: the factory's session class is replaced by a subclass whose ``get_bind`` answers
the request's connection when the bind it would have chosen is on the store's
database; binds on other databases are left alone (they are not covered). The
current request is a :class:`contextvars.ContextVar`, so threads and asyncio tasks
never see each other's connection.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from chttp_server.errors import ConfigurationError

__all__ = ["join", "joined", "same_database"]

_JOINED_MARK = "_chttp_joined"


class _Join:
    """The certified request now running in this context: its connection and sessions."""

    __slots__ = ("connection", "engine", "sessions")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.engine = connection.engine
        self.sessions: list[Session] = []


_current: ContextVar[_Join | None] = ContextVar("chttp_joined_request", default=None)


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


def join(factory: sessionmaker[Any] | scoped_session[Any], *, store: Engine) -> None:
    """Make ``factory``'s sessions join certified requests on the ``store`` engine's database.

    Raises :class:`ConfigurationError` when the factory is bound to another database:
    its writes could never commit with the stored response.
    """
    maker = factory.session_factory if isinstance(factory, scoped_session) else factory
    if not isinstance(maker, sessionmaker):
        raise ConfigurationError(
            "sessions= takes a sqlalchemy.orm.sessionmaker or scoped_session, "
            f"not {type(factory).__name__}"
        )
    bind = maker.kw.get("bind")
    if isinstance(bind, Connection):
        bind = bind.engine
    if isinstance(bind, Engine) and not same_database(bind, store):
        raise ConfigurationError(
            f"the session factory is bound to {bind.url.render_as_string()!r} but messages "
            f"are stored in {store.url.render_as_string()!r}: its writes could not commit "
            "with the stored response. Store the messages in the application's database "
            "(engine= the application's engine)"
        )
    if not getattr(maker.class_, _JOINED_MARK, False):
        maker.class_ = _joined_class(maker.class_)


@contextmanager
def joined(connection: Connection) -> Iterator[None]:
    """While the handler runs: joined sessions use ``connection``; closed when it ends."""
    join_ = _Join(connection)
    token = _current.set(join_)
    try:
        yield
    finally:
        _current.reset(token)
        for session in join_.sessions:
            # Rolls back the session's savepoint if the handler never committed it.
            session.close()


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
            if request is None:
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
