"""The Flask order service (examples/flask_orders) through a real waitress and httpx.

The views are tutorial Flask-SQLAlchemy code (``db.session.add``; ``db.session.commit()``).
``Certified(app, db)`` must make them exactly-once on SQLite (store and orders in one
file) and PostgreSQL: replays byte for byte, 422 on reuse, one row for concurrent
duplicates, nothing written by a view that commits and then raises, exactly one write
after a SIGKILL between the view's commit and the message's, 503 with the view not run
when the store is down, and nothing changed for requests without an id.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from flask import Flask
from sqlalchemy import func, select, text

from chttp_core.db import make_engine

from chttp_core.schema import messages
from chttp_examples.flask_orders import Order, create_app, db
from chttp_server import ConfigurationError, Resource
from chttp_server.flask import Certified, current_message

from tests.server.live import REPO_ROOT, serve_in_thread, wait_for

#: Runs of the test-only view, counted in memory: a rollback cannot undo them.
RUNS: list[str] = []


def add_test_views(app: Flask) -> Flask:
    @app.post("/orders/explode")
    def explode():
        RUNS.append("explode")
        db.session.add(Order(item="doomed", quantity=1))
        db.session.commit()  # only a savepoint: the exception below undoes it
        raise RuntimeError("the view failed after its commit")

    @app.post("/orders/counted")
    def counted():
        RUNS.append("counted")
        db.session.add(Order(item="counted", quantity=1))
        db.session.commit()
        return {"ran": current_message().message_id}, 201

    @app.post("/orders/gated")
    def gated():
        RUNS.append("gated")
        db.session.add(Order(item="gated", quantity=1))
        db.session.commit()
        GATE_REACHED.set()
        GATE.wait(30)
        return {"gated": True}, 201

    return app


#: Holds /orders/gated inside its transaction until the test releases it.
GATE = threading.Event()
GATE_REACHED = threading.Event()


@pytest.fixture
def app(db_url):
    RUNS.clear()
    app = add_test_views(create_app(db_url))
    yield app
    Certified.middleware(app).engine.dispose()


def count_orders(app: Flask, item: str | None = None) -> int:
    with app.app_context():
        query = select(func.count()).select_from(Order)
        if item is not None:
            query = query.where(Order.item == item)
        return int(db.session.execute(query).scalar_one())


def stored_messages(app: Flask) -> int:
    engine = Certified.middleware(app).engine
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(messages)).scalar_one())


def order(client: httpx.Client, base: str, message_id: str | None, item: str = "tea", quantity: int = 2):
    headers = {"X-Message-ID": message_id} if message_id else {}
    return client.post(f"{base}/orders", json={"item": item, "quantity": quantity}, headers=headers)


def test_first_request_then_byte_identical_replay_then_422(app):
    with serve_in_thread(app) as base, httpx.Client(timeout=30) as client:
        first = order(client, base, "o-1")
        again = order(client, base, "o-1")
        reused = order(client, base, "o-1", quantity=3)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert first.headers["X-Message-URL"] == "/chttp/messages/o-1"
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert [(k, v) for k, v in again.headers.items() if k.lower() != "idempotent-replayed"
            and k.lower() not in ("date", "server")] == \
        [(k, v) for k, v in first.headers.items() if k.lower() not in ("date", "server")]
    assert reused.status_code == 422
    assert reused.json()["type"] == "message-id-reused"
    assert count_orders(app) == 1


def test_concurrent_deliveries_of_one_id_write_one_row(app):
    barrier = threading.Barrier(16)

    def deliver(base: str) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait(30)
            return client.post(f"{base}/orders/counted", content=b"{}",
                               headers={"X-Message-ID": "dup-1"})

    with serve_in_thread(app, threads=16) as base, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: deliver(base), range(16)))
    assert {answer.status_code for answer in answers} == {201}
    assert len({answer.content for answer in answers}) == 1
    assert sum("Idempotent-Replayed" not in answer.headers for answer in answers) == 1
    assert RUNS == ["counted"]
    assert count_orders(app, "counted") == 1
    assert stored_messages(app) == 1


def test_a_view_that_commits_then_raises_writes_nothing_and_the_retry_runs_again(app):
    with serve_in_thread(app) as base, httpx.Client(timeout=30) as client:
        first = client.post(f"{base}/orders/explode", content=b"", headers={"X-Message-ID": "x-1"})
        retry = client.post(f"{base}/orders/explode", content=b"", headers={"X-Message-ID": "x-1"})
    assert first.status_code == 500
    assert retry.status_code == 500
    assert "Idempotent-Replayed" not in retry.headers
    assert RUNS == ["explode", "explode"]  # ran again: nothing had been stored
    assert count_orders(app, "doomed") == 0
    assert stored_messages(app) == 0


def test_reads_without_an_id_do_not_wait_for_a_certified_request_in_flight(app):
    """The app's own transactions begin as before (deferred on SQLite): a plain read is
    answered while a certified request holds its transaction, and sees none of it."""
    GATE.clear()
    GATE_REACHED.clear()
    with serve_in_thread(app) as base, httpx.Client(timeout=60) as client, \
            ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.post, f"{base}/orders/gated", content=b"",
                           headers={"X-Message-ID": "g-1"})
        assert GATE_REACHED.wait(30)
        try:
            listed = client.get(f"{base}/orders")
        finally:
            GATE.set()
        assert held.result().status_code == 201
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"orders": []}  # the held request had not committed yet
    assert count_orders(app, "gated") == 1


def test_requests_without_an_id_are_unchanged(app):
    with serve_in_thread(app) as base, httpx.Client(timeout=30) as client:
        created = order(client, base, None, item="plain")
        again = order(client, base, None, item="plain")
        listed = client.get(f"{base}/orders")
    assert created.status_code == again.status_code == 201
    assert "X-Message-URL" not in created.headers
    assert created.json()["id"] != again.json()["id"]
    assert [row["item"] for row in listed.json()["orders"]] == ["plain", "plain"]
    assert stored_messages(app) == 0


def test_a_certified_send_from_a_view_happens_once(app, db_url, tmp_path):
    from chttp_client import Journal
    from chttp_server import CertifiedMiddleware

    shipped: list[str] = []

    class Shipping(Resource):
        def handle_post(self, req):
            shipped.append(req.chttp.message_id)
            return {"tracking": f"T{len(shipped)}"}

    class Root(Resource):
        children = {"shipments": Shipping()}

    shipping = CertifiedMiddleware(Root(), db_url=f"sqlite:///{tmp_path / 'ship.db'}",
                                   upgrade_schema=True)
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    shop = create_app(db_url, journal=journal)
    try:
        with serve_in_thread(shipping) as ship_base:
            shop.config["SHIPPING_URL"] = ship_base
            with serve_in_thread(shop) as base, httpx.Client(timeout=30) as client:
                created = order(client, base, "s-order")
                order_id = created.json()["id"]
                first = client.post(f"{base}/orders/{order_id}/ship", headers={"X-Message-ID": "s-ship"})
                again = client.post(f"{base}/orders/{order_id}/ship", headers={"X-Message-ID": "s-ship"})
                listed = client.get(f"{base}/orders").json()["orders"]
    finally:
        journal.close()
        shipping.engine.dispose()
        Certified.middleware(shop).engine.dispose()
    assert first.status_code == 200, first.text
    assert first.json()["tracking"] == "T1"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert len(shipped) == 1
    assert [row["tracking"] for row in listed] == ["T1"]


def test_store_down_is_503_and_the_view_does_not_run(pg_cluster, pg_url):
    RUNS.clear()
    app = add_test_views(create_app(pg_url))
    database = pg_url.rsplit("/", 1)[-1]
    admin = make_engine(pg_cluster.url(), isolation_level="AUTOCOMMIT")
    try:
        with serve_in_thread(app) as base, httpx.Client(timeout=30) as client:
            assert client.post(f"{base}/orders/counted", headers={"X-Message-ID": "d-0"}).status_code == 201
            with admin.connect() as connection:
                connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
                connection.execute(text(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                    "WHERE datname = :name"), {"name": database})
            down = client.post(f"{base}/orders/counted", headers={"X-Message-ID": "d-1"})
            with admin.connect() as connection:
                connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
            back = client.post(f"{base}/orders/counted", headers={"X-Message-ID": "d-1"})
    finally:
        admin.dispose()
        Certified.middleware(app).engine.dispose()
    assert down.status_code == 503
    assert down.json()["type"] == "store-unavailable"
    assert int(down.headers["Retry-After"]) >= 1
    assert database not in down.text
    assert back.status_code == 201
    assert RUNS == ["counted", "counted"]  # d-1 ran once, after the store came back


@pytest.mark.slow
def test_sigkill_between_the_views_commit_and_the_messages_then_the_retry_writes_once(db_url, tmp_path):
    hold = tmp_path / "hold"
    reached = tmp_path / "reached"
    hold.touch()

    def start() -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.examples.flask_crash_app", db_url, str(tmp_path)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ},
        )
        line = process.stdout.readline() if process.stdout else ""
        if "serving on" not in line:
            process.kill()
            raise AssertionError(f"the Flask app did not start: {line}{process.communicate()[1]}")
        return process, line.strip().rsplit(" ", 1)[-1]

    def send(base: str) -> httpx.Response:
        return httpx.post(f"{base}/orders/held", content=b"", headers={"X-Message-ID": "k-1"},
                          timeout=60)

    doomed, base = start()
    try:
        with ThreadPoolExecutor(1) as pool:
            lost = pool.submit(send, base)
            wait_for(reached.exists, what="the view to stop after its commit")
            doomed.kill()
            doomed.communicate(timeout=10)
            with pytest.raises(httpx.TransportError):
                lost.result()
    finally:
        if doomed.poll() is None:
            doomed.kill()
    hold.unlink()
    survivor, base = start()
    try:
        retry = send(base)
        replay = send(base)
    finally:
        survivor.kill()
        survivor.communicate(timeout=10)
    assert retry.status_code == 201, retry.text
    assert "Idempotent-Replayed" not in retry.headers
    assert replay.headers["Idempotent-Replayed"] == "true"
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            held = connection.execute(text("SELECT count(*) FROM orders WHERE item = 'held'"))
            assert held.scalar_one() == 1
    finally:
        engine.dispose()


# -- set-up ----------------------------------------------------------------------------


def test_init_app_form_and_current_message_outside_a_certified_request(tmp_path):
    from flask_sqlalchemy import SQLAlchemy

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.db'}"
    own_db = SQLAlchemy(app)
    ext = Certified(upgrade_schema=True)
    ext.init_app(app, own_db)

    @app.get("/who")
    def who():
        message = current_message()
        return {"id": message.message_id if message else None}

    client = app.test_client()
    assert client.get("/who").json == {"id": None}
    assert client.get("/who", headers={"X-Message-ID": "w-1"}).json == {"id": "w-1"}
    with pytest.raises(ConfigurationError, match="already set up"):
        ext.init_app(app, own_db)
    Certified.middleware(app).engine.dispose()


def test_a_store_on_another_database_than_db_is_refused(tmp_path):
    from flask_sqlalchemy import SQLAlchemy

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.db'}"
    own_db = SQLAlchemy(app)
    with pytest.raises(ConfigurationError, match="Drop engine=/db_url="):
        Certified(app, own_db, db_url=f"sqlite:///{tmp_path / 'other.db'}")


def test_a_db_not_set_up_for_the_app_is_refused():
    from flask_sqlalchemy import SQLAlchemy

    with pytest.raises(ConfigurationError, match="db.init_app"):
        Certified(Flask(__name__), SQLAlchemy())


def test_neither_db_nor_engine_is_refused():
    with pytest.raises(ConfigurationError, match="engine"):
        Certified(Flask(__name__))


def test_engine_form_without_flask_sqlalchemy(tmp_path):
    from sqlalchemy import Column, Integer, MetaData, String, Table, insert

    from chttp_core.db import make_engine

    metadata = MetaData()
    notes = Table("notes", metadata, Column("id", Integer, primary_key=True), Column("text", String(50)))
    engine = make_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    metadata.create_all(engine)
    app = Flask(__name__)
    Certified(app, engine=engine, upgrade_schema=True)

    @app.post("/notes")
    def add_note():
        current_message().connection.execute(insert(notes).values(text="hi"))
        return {"ok": True}, 201

    client = app.test_client()
    first = client.post("/notes", headers={"X-Message-ID": "n-1"})
    again = client.post("/notes", headers={"X-Message-ID": "n-1"})
    assert first.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(notes)).scalar_one() == 1
    engine.dispose()


def test_example_serves_from_the_command_line(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "chttp_examples.flask_orders", "--db",
         f"sqlite:///{tmp_path / 'cli.db'}", "--port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert "serving on" in line, process.stderr.read() if process.stderr else ""
        base = line.strip().rsplit(" ", 1)[-1]
        answer = httpx.post(f"{base}/orders", json={"item": "cli"}, headers={"X-Message-ID": "c-1"})
        assert answer.status_code == 201
    finally:
        process.kill()
        process.communicate(timeout=10)
    assert Path(tmp_path / "cli.db").exists()
