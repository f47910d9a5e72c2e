"""A plain WSGI + SQLAlchemy app's own sessions joined to the certified request
(``CertifiedMiddleware(..., sessions=Session)``, chttp_server.sessions).

The app below knows nothing of chttp: it makes its sessions from its own
``scoped_session`` / ``sessionmaker`` on its own engine and commits them itself. With
``sessions=`` its writes must commit with the stored response or not at all.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import webtest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from chttp_core.db import make_engine
from chttp_core.migrate import upgrade
from chttp_server import CertifiedMiddleware, ConfigurationError

from .apps import host_metadata, host_writes
from .live import serve_in_thread


class PlainApp:
    """WSGI app writing through the application's own session factory."""

    def __init__(self, factory) -> None:
        self.factory = factory
        self.runs: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        with self.lock:
            self.runs.append(path)
        session = self.factory()
        session.execute(insert(host_writes).values(message_id=path, note="plain"))
        session.commit()  # the app's own commit: joined, it only releases a savepoint
        if isinstance(self.factory, scoped_session):
            self.factory.remove()
        if path == "/raise":
            raise RuntimeError("after the commit")
        body = json.dumps({"path": path, "runs": len(self.runs)}).encode()
        start_response("201 Created", [("Content-Type", "application/json")])
        return [body]


@pytest.fixture
def app_engine(db_url):
    engine = make_engine(db_url)
    host_metadata.create_all(engine)
    upgrade(engine)
    yield engine
    engine.dispose()


def count(engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(host_writes)).scalar_one())


@pytest.fixture(params=["scoped_session", "sessionmaker"])
def factory(request, app_engine):
    maker = sessionmaker(bind=app_engine)
    return scoped_session(maker) if request.param == "scoped_session" else maker


def test_replay_and_rollback_on_raise(factory, app_engine, db_url):
    plain = PlainApp(factory)
    # The store on its own engine (db_url=) but the same database as the app's engine.
    middleware = CertifiedMiddleware(plain, db_url=db_url, sessions=factory)
    app = webtest.TestApp(middleware)
    try:
        first = app.post("/orders", b"x", headers={"X-Message-ID": "p-1"})
        again = app.post("/orders", b"x", headers={"X-Message-ID": "p-1"})
        assert first.status_int == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.body == first.body
        assert count(app_engine) == 1

        with pytest.raises(RuntimeError):
            app.post("/raise", b"", headers={"X-Message-ID": "p-2"})
        assert count(app_engine) == 1  # the committed-then-raised write is gone
        with pytest.raises(RuntimeError):
            app.post("/raise", b"", headers={"X-Message-ID": "p-2"})
        assert plain.runs == ["/orders", "/raise", "/raise"]  # the retry ran again

        app.post("/free", b"")  # no id: the app's own commit is its own, as before
        assert count(app_engine) == 2
    finally:
        middleware.engine.dispose()


def test_concurrent_duplicates_write_once(factory, app_engine):
    plain = PlainApp(factory)
    middleware = CertifiedMiddleware(plain, engine=app_engine, sessions=[factory])
    barrier = threading.Barrier(16)

    def deliver(base: str) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait(30)
            return client.post(f"{base}/orders", content=b"x", headers={"X-Message-ID": "dup"})

    with serve_in_thread(middleware, threads=16) as base, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: deliver(base), range(16)))
    assert {answer.status_code for answer in answers} == {201}
    assert len({answer.content for answer in answers}) == 1
    assert plain.runs == ["/orders"]
    assert count(app_engine) == 1


def test_sessions_outside_certified_requests_are_unchanged(factory, app_engine):
    CertifiedMiddleware(PlainApp(factory), engine=app_engine, sessions=factory)
    session = factory()
    session.execute(insert(host_writes).values(message_id="direct", note="plain"))
    session.commit()
    session.close()
    assert count(app_engine) == 1
    assert isinstance(session, Session)


def test_a_factory_on_another_database_is_refused(app_engine, tmp_path):
    other = make_engine(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    try:
        with pytest.raises(ConfigurationError, match="engine= the application's engine"):
            CertifiedMiddleware(PlainApp(None), engine=app_engine,
                                sessions=sessionmaker(bind=other))
    finally:
        other.dispose()


def test_something_that_is_not_a_session_factory_is_refused(app_engine):
    with pytest.raises(ConfigurationError, match="sessionmaker or scoped_session"):
        CertifiedMiddleware(PlainApp(None), engine=app_engine, sessions=object())
