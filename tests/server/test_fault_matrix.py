"""The store dropped at every statement of the certified path, two ways (docs/protocol.rst §4).

One parametrised test over the whole path — the claim, the handler's own statement, the
completion (the response UPDATE), COMMIT, the replay's read, its hold for the
synchronous standbys and its commit, the message resource's GET (the same three) and
DELETE (read, acknowledging UPDATE, COMMIT) — with the fault
injected the moment the receiver's connection is about to send that statement:

* ``terminate``: the backend is killed with ``pg_terminate_backend`` from another
  connection (the call waits until it has exited);
* ``stop``: the whole server is stopped with ``pg_ctl stop -m immediate`` (a crash: no
  shutdown checkpoint), at three of those points, and started again afterwards.

The point is found by a SQLAlchemy ``before_cursor_execute`` / ``commit`` / ``rollback``
listener on the receiver's engine, so the library is not edited; the fault itself is
the real thing. For every case: the answer is 503 ``store-unavailable`` + Retry-After
problem+json, never a 500; the store holds no partial row (a completed claim without
its response) and no effect without its message row; and after recovery the next retry
gives the correct result with exactly one effect. ``test_faults_injected`` reports the
count (the figure asked for in issue 11).

Every case runs on three front ends (issue 23): the bare middleware (the handler writes
through ``req.chttp.connection``), ``sessions=`` (a ``sessionmaker`` whose session
commits inside the message) and Flask + Flask-SQLAlchemy (``db.session.commit()`` in a
view; Flask turns the view's failure into its own 500 page, which must still be
answered 503). The view's commit sends nothing of its own (its savepoint is neither
released nor sent alone: chttp_server.savepoints), so the session front ends add the
point ``handler-after-commit``: the view's next statement after its commit, which
carries the savepoint its session begins anew, meets the dead connection.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Iterator

import pytest
import webtest
from sqlalchemy import Engine, event, func, insert, select, text
from sqlalchemy.orm import sessionmaker

from chttp_core.db import make_engine
from chttp_core.migrate import upgrade
from chttp_server import CertifiedMiddleware
from chttp_server.testing import PostgresCluster

from chttp_server.context import ENVIRON_KEY

from .apps import Root, count_writes, host_metadata, host_writes
from .statements import is_claim, is_commit, is_completion, is_hold, is_lookup
from .test_store_faults import assert_generic_503

Matcher = Callable[[str], bool]

#: Faults injected by this module's tests (checked and printed at the end).
INJECTED: list[str] = []


def handler_statement(what: str) -> bool:
    return what.lstrip().upper().startswith("INSERT INTO HOST_WRITES")


def handler_after_commit(what: str) -> bool:
    upper = what.lstrip().upper()
    return upper.startswith("SELECT COUNT(*)") and "FROM HOST_WRITES" in upper


claim, completion, lookup, hold, commit = is_claim, is_completion, is_lookup, is_hold, is_commit


class Injector:
    """Run ``fault`` on the receiver's connection the next time ``point`` is reached."""

    def __init__(self, engine: Engine, fault: Callable[[object], None]) -> None:
        self.engine, self.fault = engine, fault
        self.point: Matcher | None = None
        self.fired = 0
        event.listen(engine, "before_cursor_execute", self.on_statement)
        event.listen(engine, "commit", self.on_commit)
        event.listen(engine, "rollback", self.on_rollback)

    def arm(self, point: Matcher) -> None:
        self.point = point

    def fire(self, connection: object, what: str) -> None:
        if self.point is not None and self.point(what):
            self.point = None
            self.fault(connection)
            self.fired += 1

    def on_statement(self, connection, _cursor, statement, *_rest) -> None:
        self.fire(connection, statement)

    def on_commit(self, connection) -> None:
        self.fire(connection, "COMMIT")

    def on_rollback(self, connection) -> None:
        self.fire(connection, "ROLLBACK")

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self.on_statement)
        event.remove(self.engine, "commit", self.on_commit)
        event.remove(self.engine, "rollback", self.on_rollback)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """A server of this module's own: the ``stop`` cases crash it."""
    server = PostgresCluster(settings={"fsync": "off", "full_page_writes": "off"})
    server.start()
    yield server
    server.destroy()


_numbers = iter(range(1, 10_000))


@pytest.fixture
def store(cluster: PostgresCluster) -> Iterator[tuple[Engine, str]]:
    if not cluster.running:
        cluster.start()
    url = cluster.create_database(f"matrix_{next(_numbers)}")
    engine = make_engine(url)
    host_metadata.create_all(engine)
    upgrade(engine)
    yield engine, url
    engine.dispose()


def terminate(admin_url: str) -> Callable[[object], None]:
    admin = make_engine(admin_url)

    def kill(connection) -> None:
        pid = connection.connection.dbapi_connection.get_backend_pid()
        with admin.connect() as session:
            assert session.execute(text("SELECT pg_terminate_backend(:pid, 10000)"),
                                   {"pid": pid}).scalar_one()
        admin.dispose()
    return kill


def stop(cluster: PostgresCluster) -> Callable[[object], None]:
    return lambda _connection: cluster.stop("immediate")


# (case id, what happens before, the faulted request, the point)
POST_FRESH, POST_AGAIN, GET, DELETE = "post", "post-again", "get", "delete"
POINTS = [
    ("claim", POST_FRESH, claim),
    ("handler", POST_FRESH, handler_statement),
    ("completion", POST_FRESH, completion),
    ("commit", POST_FRESH, commit),
    ("replay-read", POST_AGAIN, claim),
    ("replay-hold", POST_AGAIN, hold),
    ("replay-commit", POST_AGAIN, commit),
    ("get-read", GET, lookup),
    ("get-hold", GET, hold),
    ("get-commit", GET, commit),
    ("delete-read", DELETE, lookup),
    ("delete-write", DELETE, completion),
    ("delete-commit", DELETE, commit),
]
SESSION_POINTS = [("handler-after-commit", POST_FRESH, handler_after_commit)]
STOPPED_AT = {"handler", "handler-after-commit", "commit", "get-read"}
FRONT_ENDS = ("wsgi", "sessions", "flask")
CASES = [pytest.param(front, kind, name, request, point, id=f"{front}-{kind}-{name}")
         for front in FRONT_ENDS
         for kind in ("terminate", "stop")
         for name, request, point in POINTS + (SESSION_POINTS if front != "wsgi" else [])
         if kind == "terminate" or name in STOPPED_AT]


def front_end(front: str, engine: Engine, url: str) -> tuple[webtest.TestApp, Engine, Callable[[], None]]:
    """The certified app of one front end, the engine its connections come from, and
    how to dispose of what it made."""
    if front == "wsgi":
        return webtest.TestApp(CertifiedMiddleware(Root(), engine=engine, retry_after=1)), \
            engine, lambda: None
    if front == "sessions":
        Session = sessionmaker(bind=engine)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            context = environ[ENVIRON_KEY]
            with Session() as session:
                session.execute(insert(host_writes).values(message_id=context.message_id,
                                                           note="echo"))
                session.commit()  # inside the message's transaction
                session.execute(select(func.count()).select_from(host_writes)).scalar_one()
            start_response("201 Created", [("Content-Type", "application/json")])
            return [json.dumps({"message_id": context.message_id}).encode()]

        middleware = CertifiedMiddleware(app, engine=engine, retry_after=1, sessions=Session)
        return webtest.TestApp(middleware), engine, lambda: None
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from chttp_core.db import normalize_url
    from chttp_server.flask import Certified, current_message

    flask_app = Flask(__name__)
    flask_app.config["SQLALCHEMY_DATABASE_URI"] = normalize_url(url).render_as_string(
        hide_password=False)
    db = SQLAlchemy()
    db.init_app(flask_app)

    @flask_app.post("/echo")
    def echo() -> tuple[dict[str, str], int]:
        message = current_message()
        assert message is not None
        db.session.execute(insert(host_writes).values(message_id=message.message_id,
                                                      note="echo"))
        db.session.commit()
        db.session.execute(select(func.count()).select_from(host_writes)).scalar_one()
        return {"message_id": message.message_id}, 201

    Certified(flask_app, db, retry_after=1)
    flask_engine = Certified.middleware(flask_app).engine
    return webtest.TestApp(flask_app), flask_engine, flask_engine.dispose


def partial_rows(engine: Engine) -> int:
    """Claims without their response, and effects without their message (never allowed)."""
    with engine.connect() as connection:
        return int(connection.execute(text(
            "SELECT (SELECT count(*) FROM chttp_messages WHERE state = 'completed' "
            "AND (status IS NULL OR body IS NULL OR headers IS NULL)) + "
            "(SELECT count(*) FROM host_writes AS w WHERE NOT EXISTS (SELECT 1 FROM "
            "chttp_messages AS m WHERE m.message_id = w.message_id))")).scalar_one())


def until_answered(make_request: Callable[[], webtest.TestResponse]) -> webtest.TestResponse:
    """Retry through 503s while the server comes back (each 503 checked on the way)."""
    for _ in range(50):
        response = make_request()
        if response.status_int != 503:
            return response
        assert_generic_503(response)
    raise AssertionError("the store never came back")


@pytest.mark.parametrize("front, kind, name, request_kind, point", CASES)
def test_store_dropped_at_a_statement(store, cluster, front, kind, name, request_kind, point):
    engine, url = store
    app, app_engine, dispose = front_end(front, engine, url)
    try:
        run_case(app, app_engine, engine, url, cluster, kind, name, request_kind, point)
    finally:
        dispose()
    INJECTED.append(f"{front}-{kind}-{name}")


def run_case(app: webtest.TestApp, app_engine: Engine, engine: Engine, url: str,
             cluster: PostgresCluster, kind: str, name: str, request_kind: str,
             point: Matcher) -> None:
    message_id = f"f-{kind[:4]}-{name}"

    def post() -> webtest.TestResponse:
        return app.post("/echo", b"10", headers={"X-Message-ID": message_id}, status="*")

    first = None
    if request_kind != POST_FRESH:
        first = post()
        assert first.status_int == 201
    message_url = first.headers["X-Message-URL"] if first is not None else ""

    def faulted() -> webtest.TestResponse:
        if request_kind in (POST_FRESH, POST_AGAIN):
            return post()
        return app.request(message_url, method=request_kind.upper(), status="*")

    injector = Injector(app_engine, terminate(url) if kind == "terminate" else stop(cluster))
    try:
        injector.arm(point)
        answer = faulted()
    finally:
        injector.close()
    assert injector.fired == 1, f"{name}: the point was never reached"
    if answer.status_int == 503:
        assert_generic_503(answer)
    else:
        # A claim that meets a connection the database dropped before anything ran is
        # retried once on a fresh one (MessageTransaction.claim): then a correct result.
        assert point in (claim,) and request_kind in (POST_FRESH, POST_AGAIN), answer
        assert answer.status_int == 201 and answer.json["message_id"] == message_id
        if first is not None:
            assert answer.headers["Idempotent-Replayed"] == "true" and answer.body == first.body
    if kind == "stop":
        cluster.start()

    # After recovery: the correct result, exactly one effect, nothing partial.
    if request_kind in (POST_FRESH, POST_AGAIN):
        retry = until_answered(post)
        assert retry.status_int == 201
        assert retry.json["message_id"] == message_id
        if first is not None:
            assert retry.headers["Idempotent-Replayed"] == "true"
            assert retry.body == first.body
    elif request_kind == GET:
        assert until_answered(faulted).body == first.body
    else:
        assert until_answered(faulted).status_int == 204
        assert app.get(message_url, status="*").json["type"] == "message-acknowledged"
    assert count_writes(engine, "echo") == 1
    assert partial_rows(engine) == 0


def test_faults_injected() -> None:
    """Runs after the matrix (file order): every case injected its fault exactly once."""
    if not INJECTED:
        pytest.skip("run with the matrix above to count its faults")
    print(f"\nfault matrix: {len(INJECTED)} faults injected "
          f"({sum('-terminate-' in k for k in INJECTED)} pg_terminate_backend, "
          f"{sum('-stop-' in k for k in INJECTED)} pg_ctl stop -m immediate; "
          f"front ends: {', '.join(FRONT_ENDS)})")
    assert len(INJECTED) == len(CASES)
