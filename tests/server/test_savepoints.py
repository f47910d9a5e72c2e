"""A joined session's savepoints cost no round trips of their own (chttp_server.savepoints),
and still mean what they meant.

The semantics, on SQLite and PostgreSQL: the view's ``commit()`` is durable with the
stored response, its ``rollback()`` undoes only what it did since (in whatever shape:
a rollback before anything was sent, an ``executemany``, a nested savepoint), a 5xx leaves nothing. On PostgreSQL + psycopg2 the query strings
the server received are read back from the cursors (``cursor.query``): no ``RELEASE SAVEPOINT``, and no ``SAVEPOINT`` sent alone.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
import webtest
from sqlalchemy import Engine, event, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from chttp_core.db import make_engine
from chttp_core.migrate import upgrade
from chttp_server import CertifiedMiddleware

from .apps import host_metadata, host_writes

View = Callable[[Session], None]


def notes(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(select(host_writes.c.note)).scalars())


def write(session: Session, note: str) -> None:
    session.execute(insert(host_writes).values(message_id="m", note=note))


def serve(engine: Engine, view: View, status: int = 201) -> webtest.TestApp:
    Session_ = sessionmaker(bind=engine)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with Session_() as session:
            view(session)
        start_response(f"{status} Status", [("Content-Type", "application/json")])
        return [json.dumps({"ok": True}).encode()]

    return webtest.TestApp(CertifiedMiddleware(app, engine=engine, sessions=Session_))


@pytest.fixture
def engine(db_url: str):
    made = make_engine(db_url)
    host_metadata.create_all(made)
    upgrade(made)
    yield made
    made.dispose()


def post(app: webtest.TestApp, message_id: str = "m-1") -> webtest.TestResponse:
    return app.post("/w", b"{}", headers={"X-Message-ID": message_id}, status="*")


def commit_then_roll_back(session: Session) -> None:
    write(session, "kept")
    session.commit()
    write(session, "undone")
    session.rollback()


def roll_back_before_anything(session: Session) -> None:
    session.connection()     # a savepoint begun and rolled back before any statement
    session.rollback()
    write(session, "kept")
    session.commit()


def executemany_rolled_back(session: Session) -> None:
    write(session, "kept")
    session.commit()
    session.execute(insert(host_writes), [{"message_id": "m", "note": f"many-{n}"}
                                          for n in range(3)])
    session.rollback()


def nested(session: Session) -> None:
    write(session, "kept")
    inner = session.begin_nested()
    write(session, "inner-undone")
    inner.rollback()
    with session.begin_nested():
        write(session, "inner-kept")
    session.commit()


@pytest.mark.parametrize("view, kept", [
    (commit_then_roll_back, ["kept"]),
    (roll_back_before_anything, ["kept"]),
    (executemany_rolled_back, ["kept"]),
    (nested, ["inner-kept", "kept"]),
])
def test_rollback_undoes_only_the_view_work_since(engine, view: View, kept: list[str]):
    app = serve(engine, view)
    first = post(app)
    assert first.status_int == 201
    assert notes(engine) == kept
    again = post(app)  # replayed: the view does not run again
    assert again.headers["Idempotent-Replayed"] == "true"
    assert notes(engine) == kept


def test_a_5xx_leaves_nothing_the_view_committed(engine):
    app = serve(engine, commit_then_roll_back, status=500)
    assert post(app).status_int == 500
    assert notes(engine) == []
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM chttp_messages")).scalar_one() == 0


def test_outside_a_certified_request_savepoints_are_sqlalchemy_s(engine):
    app = serve(engine, commit_then_roll_back)
    post(app)  # the hooks are installed on the engine's dialect by now
    with Session(bind=engine) as session:
        write(session, "plain")
        savepoint = session.begin_nested()
        write(session, "nested-undone")
        savepoint.rollback()
        session.commit()
    assert notes(engine) == ["kept", "plain"]


def test_postgresql_joined_savepoints_send_no_round_trip_of_their_own(engine, db_url: str):
    if not db_url.startswith("postgresql"):
        pytest.skip("the query strings are read from psycopg2's cursors")
    sent: list[str] = []

    def record(_connection: Any, cursor: Any, *_rest: Any) -> None:
        sent.append(cursor.query.decode().strip().upper())  # what the server received

    app = serve(engine, commit_then_roll_back)
    event.listen(engine, "after_cursor_execute", record)
    try:
        assert post(app).status_int == 201
    finally:
        event.remove(engine, "after_cursor_execute", record)
    assert not [q for q in sent if q.startswith("SAVEPOINT") and ";" not in q], sent
    assert not [q for q in sent if "RELEASE SAVEPOINT" in q], sent
    carrying = [q for q in sent if q.startswith("SAVEPOINT SA_SAVEPOINT_")
                and "INSERT INTO HOST_WRITES" in q]
    assert len(carrying) == 2, sent  # the first write, and the write after the commit
    assert notes(engine) == ["kept"]
