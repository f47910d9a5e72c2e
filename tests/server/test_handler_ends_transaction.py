"""A handler that ends the message's transaction itself never wedges its message (issue 23).

The transaction belongs to the message (docs/protocol.rst §2). A handler may still end
it: through the connection's ``commit()`` / ``rollback()``, or by sending ``COMMIT`` /
``ROLLBACK`` / ``END`` as SQL. Before this was detected, a raw ``COMMIT`` made the claim
row durable as "completed" with no response, and every retry until the expiry was a
bare 500 (``assert message.status is not None`` in the replay).

Now, for every way × (the handler returns normally, the handler raises), on SQLite, on
PostgreSQL through psycopg2 (the store's own fused transaction) and through psycopg 3
(SQLAlchemy's transaction):

* returning normally is refused with :class:`HandlerEndedTransaction` and nothing is
  stored (the store checks, within the stored response's own statement, that its
  transaction is still the claiming one);
* when the transaction was really committed on the server, the claim and the work
  before the commit are durable: every retry and the message URL get 410
  ``message-outcome-unknown`` problem+json (never a bare 500, never a second run);
* when it was rolled back (or, on psycopg2's fused transaction, ``commit()`` /
  ``rollback()`` never reached the server), nothing is left and the retry runs afresh,
  exactly once.

A SIGKILL after a raw ``COMMIT`` (tests/server/crash_app.py) leaves the same durable row:
the restarted receiver answers its retry 410 too.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable

import pytest
import webtest
from sqlalchemy import func, insert, select

from chttp_core.db import make_engine
from chttp_core.migrate import upgrade
from chttp_core.schema import messages
from chttp_server import CertifiedMiddleware
from chttp_server.context import ENVIRON_KEY
from chttp_server.errors import HandlerEndedTransaction

from .apps import count_writes, host_metadata, host_writes

#: How a handler ends the transaction, and whether that commits it on the server.
WAYS: dict[str, Callable[[Any], object]] = {
    "connection.commit()": lambda connection: connection.commit(),
    "connection.rollback()": lambda connection: connection.rollback(),
    "COMMIT": lambda connection: connection.exec_driver_sql("COMMIT"),
    "ROLLBACK": lambda connection: connection.exec_driver_sql("ROLLBACK"),
    "END": lambda connection: connection.exec_driver_sql("END"),
}


class Failed(RuntimeError):
    """The handler's own failure after it ended the transaction."""


def ending_app(end: Callable[[Any], object], *, then_raise: bool) -> Callable[..., Iterable[bytes]]:
    """Writes once, ends the transaction its way, then raises or answers 201."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        context = environ[ENVIRON_KEY]
        context.connection.execute(insert(host_writes).values(
            message_id=context.message_id, note="before"))
        end(context.connection)
        if then_raise:
            raise Failed("the handler failed after ending the transaction")
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"ended"]

    return app


def fixed_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    context = environ[ENVIRON_KEY]
    context.connection.execute(insert(host_writes).values(
        message_id=context.message_id, note="fixed"))
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"fixed"]


@pytest.fixture(params=["sqlite", "psycopg2", "psycopg"])
def store_engine(request):
    """A migrated database: SQLite, or PostgreSQL through psycopg2 (the store's fused
    transaction) or psycopg 3 (SQLAlchemy's own transaction)."""
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
        url = url.replace("postgresql://", f"postgresql+{request.param}://", 1)
    engine = make_engine(url, pool_pre_ping=False)
    host_metadata.create_all(engine)
    upgrade(engine)
    yield request.param, engine
    engine.dispose()


def message_rows(engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(messages.c.message_id, messages.c.state, messages.c.status))]


def committed_on_server(driver: str, way: str) -> bool:
    """True if this way really commits the claim's transaction on the server.

    psycopg2's fused transaction runs in driver autocommit: its ``commit()`` is a no-op
    on the server (the transaction stays open and is refused before storing, as before).
    """
    if way in ("COMMIT", "END"):
        return True
    return way == "connection.commit()" and driver != "psycopg2"


@pytest.mark.parametrize("then_raise", [pytest.param(False, id="returns"),
                                        pytest.param(True, id="raises")])
@pytest.mark.parametrize("way", list(WAYS))
def test_a_handler_that_ends_the_transaction_never_wedges_its_message(
        store_engine, way, then_raise, caplog):
    driver, engine = store_engine
    broken = webtest.TestApp(CertifiedMiddleware(
        ending_app(WAYS[way], then_raise=then_raise), engine=engine))
    message_id = "ends-1"
    with pytest.raises(Failed if then_raise else HandlerEndedTransaction):
        broken.post("/orders", b"1", headers={"X-Message-ID": message_id})

    fixed = webtest.TestApp(CertifiedMiddleware(fixed_app, engine=engine))
    if committed_on_server(driver, way):
        # The handler's own commit made the claim and its first write durable: that work
        # must not run again, and there is no response to replay.
        assert message_rows(engine) == [(message_id, "completed", None)]
        assert count_writes(engine, "before") == 1
        with caplog.at_level(logging.ERROR, logger="chttp_server"):
            retry = fixed.post("/orders", b"1", headers={"X-Message-ID": message_id},
                               status=410)
            fetched = fixed.get(f"/chttp/messages/{message_id}", status=410)
        for answer in (retry, fetched):
            assert answer.content_type == "application/problem+json"
            problem = json.loads(answer.body)
            assert problem["type"] == "message-outcome-unknown"
            assert problem["status"] == 410
        assert sum("committed without a response" in record.getMessage()
                   for record in caplog.records) == 2
        assert count_writes(engine, "fixed") == 0
        # The sender may still acknowledge it; the tombstone answers 410 as ever.
        fixed.delete(f"/chttp/messages/{message_id}", status=204)
        assert json.loads(fixed.get(f"/chttp/messages/{message_id}", status=410).body)[
            "type"] == "message-acknowledged"
    else:
        assert message_rows(engine) == []
        assert count_writes(engine) == 0
        first = fixed.post("/orders", b"1", headers={"X-Message-ID": message_id}, status=201)
        again = fixed.post("/orders", b"1", headers={"X-Message-ID": message_id}, status=201)
        assert again.headers["Idempotent-Replayed"] == "true" and again.body == first.body
        assert count_writes(engine, "fixed") == 1


@pytest.mark.parametrize("way", ["COMMIT", "ROLLBACK", "END"])
def test_nothing_a_handler_writes_after_ending_the_transaction_survives(store_engine, way):
    """Writes after the handler's own ``COMMIT`` / ``ROLLBACK``: where the driver is in
    autocommit (psycopg2's fused transaction, SQLite's BEGIN IMMEDIATE) each would have
    committed on its own — after a ROLLBACK without its message, and again on the retry.
    They are refused unsent (a DB-API ProgrammingError the handler sees), or, on psycopg 3,
    run in a new transaction that the refusal rolls back. Either way none survives, and
    a handler that swallows the error is still refused as a whole."""
    driver, engine = store_engine
    refused: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        context = environ[ENVIRON_KEY]
        context.connection.execute(insert(host_writes).values(
            message_id=context.message_id, note="before"))
        context.connection.exec_driver_sql(way)
        try:
            context.connection.execute(insert(host_writes).values(
                message_id=context.message_id, note="after"))
        except Exception as error:  # noqa: BLE001 - a handler that swallows it
            refused.append(type(error).__name__)
        start_response("200 OK", [])
        return [b"ok"]

    with pytest.raises(HandlerEndedTransaction):
        webtest.TestApp(CertifiedMiddleware(app, engine=engine)).post(
            "/x", b"", headers={"X-Message-ID": "ends-2"})
    assert count_writes(engine, "after") == 0
    assert refused == ([] if driver == "psycopg" else ["ProgrammingError"])
    fixed = webtest.TestApp(CertifiedMiddleware(fixed_app, engine=engine))
    if way == "ROLLBACK":
        assert message_rows(engine) == [] and count_writes(engine) == 0
        fixed.post("/x", b"", headers={"X-Message-ID": "ends-2"}, status=201)
        assert count_writes(engine, "fixed") == 1
    else:
        assert message_rows(engine) == [("ends-2", "completed", None)]
        assert count_writes(engine, "before") == 1
        fixed.post("/x", b"", headers={"X-Message-ID": "ends-2"}, status=410)
        assert count_writes(engine, "fixed") == 0


def test_no_message_is_stored_without_its_response_by_the_refusal(store_engine):
    """The refusal itself stores nothing: every row the store holds has its response or
    was left by the handler's own commit."""
    driver, engine = store_engine
    app = webtest.TestApp(CertifiedMiddleware(fixed_app, engine=engine))
    for number in range(3):
        app.post("/x", b"", headers={"X-Message-ID": f"ok-{number}"}, status=201)
    with engine.connect() as connection:
        incomplete = connection.execute(select(func.count()).select_from(messages).where(
            messages.c.status.is_(None))).scalar_one()
    assert incomplete == 0


@pytest.mark.slow
def test_sigkill_after_the_handlers_own_commit_is_answered_410_not_500(db_url, tmp_path):
    """The handler sends ``COMMIT``, then its process is SIGKILLed: the claim and the first
    half are durable, the response never existed. The restarted receiver answers the
    retry 410 message-outcome-unknown and does not run the handler again."""
    import httpx

    from .live import ServerProcess, wait_for

    engine = make_engine(db_url)
    host_metadata.create_all(engine)
    upgrade(engine)
    (tmp_path / "hold").touch()
    env = {"CHTTP_TEST_HOLD_DIR": str(tmp_path)}

    def send(base: str) -> httpx.Response:
        return httpx.post(f"{base}/?end=COMMIT", content=b"pay 10",
                          headers={"X-Message-ID": "killed-1"}, timeout=60)

    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            with ServerProcess("tests.server.crash_app:app", db_url, env=env) as doomed:
                lost = pool.submit(send, doomed.url)
                wait_for((tmp_path / "reached").exists, what="the handler to hold after COMMIT")
                doomed.kill()
            with pytest.raises(httpx.TransportError):
                lost.result()
        assert message_rows(engine) == [("killed-1", "completed", None)]
        (tmp_path / "hold").unlink()
        with ServerProcess("tests.server.crash_app:app", db_url, env=env) as fresh:
            retry = send(fresh.url)
            again = send(fresh.url)
        for answer in (retry, again):
            assert answer.status_code == 410, answer.text
            assert answer.headers["Content-Type"] == "application/problem+json"
            assert answer.json()["type"] == "message-outcome-unknown"
        assert count_writes(engine, "first-half") == 1
        assert count_writes(engine, "second-half") == 0
    finally:
        engine.dispose()


def flask_app(url: str, *, then_raise: bool) -> Any:
    """A Flask-SQLAlchemy view that writes, sends ``COMMIT`` through ``db.session``, then
    raises or answers 201 (Flask turns the raise into its own 500 page)."""
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy import text

    from chttp_core.db import normalize_url
    from chttp_server.flask import Certified, current_message

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = normalize_url(url).render_as_string(
        hide_password=False)
    db = SQLAlchemy()
    db.init_app(app)

    @app.post("/orders")
    def create() -> tuple[dict[str, str], int]:
        message = current_message()
        assert message is not None
        db.session.execute(insert(host_writes).values(message_id=message.message_id,
                                                      note="before"))
        db.session.execute(text("COMMIT"))
        if then_raise:
            raise Failed("the view failed after its COMMIT")
        return {"ok": message.message_id}, 201

    Certified(app, db)
    return app


@pytest.mark.parametrize("then_raise", [pytest.param(False, id="returns"),
                                        pytest.param(True, id="raises")])
def test_flask_session_commit_sql_never_wedges_its_message(db_url, then_raise):
    from chttp_server.flask import Certified

    engine = make_engine(db_url)
    host_metadata.create_all(engine)
    upgrade(engine)
    app = flask_app(db_url, then_raise=then_raise)
    client = webtest.TestApp(app)
    try:
        try:
            first_status: object = client.post("/orders", b"1", headers={
                "X-Message-ID": "flask-1"}, expect_errors=True).status_int
        except Exception as error:  # noqa: BLE001 - the refusal may surface as an exception
            first_status = type(error).__name__
        # The first answer is the refusal: the view's session meets the ended transaction
        # when Flask closes it, after the view returned or raised.
        assert first_status == "HandlerEndedTransaction"
        # The view's COMMIT made the claim and its first write durable: 410, never 500,
        # never a second run.
        assert message_rows(engine) == [("flask-1", "completed", None)]
        for _ in range(2):
            retry = client.post("/orders", b"1", headers={"X-Message-ID": "flask-1"}, status=410)
            assert json.loads(retry.body)["type"] == "message-outcome-unknown"
        assert count_writes(engine, "before") == 1
    finally:
        Certified.middleware(app).engine.dispose()
        engine.dispose()


@pytest.mark.parametrize("then_raise", [pytest.param(False, id="swallowed"),
                                        pytest.param(True, id="raises")])
def test_a_procedure_that_commits_cannot_end_the_message(store_engine, then_raise):
    """PostgreSQL refuses a procedure's COMMIT inside the message's transaction block
    ("invalid transaction termination"): the call fails, nothing of the procedure is
    durable, and the message is refused or rolled back whole; the retry runs afresh."""
    driver, engine = store_engine
    if driver == "sqlite":
        pytest.skip("SQLite has no procedures")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE PROCEDURE commits_inside(id text) LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO host_writes (message_id, note) VALUES (id, 'procedure'); COMMIT; "
            "END $$")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        context = environ[ENVIRON_KEY]
        try:
            context.connection.exec_driver_sql(
                f"CALL commits_inside('{context.message_id}')")
        except Exception:
            if then_raise:
                raise
        start_response("201 Created", [])
        return [b"called"]

    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError) as caught:
        webtest.TestApp(CertifiedMiddleware(app, engine=engine)).post(
            "/x", b"", headers={"X-Message-ID": "proc-1"})
    # Raised: the procedure's own error. Swallowed: the stored response then meets the
    # aborted transaction ("current transaction is aborted"): nothing is stored either way.
    expected = "invalid transaction termination" if then_raise else "is aborted"
    assert expected in str(caught.value)
    assert count_writes(engine) == 0 and message_rows(engine) == []
    fixed = webtest.TestApp(CertifiedMiddleware(fixed_app, engine=engine))
    fixed.post("/x", b"", headers={"X-Message-ID": "proc-1"}, status=201)
    assert count_writes(engine, "fixed") == 1


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_the_async_drivers_through_run_sync_refuse_it_too(pg_url, driver):
    """The ASGI front end drives the same MessageTransaction through SQLAlchemy's greenlet
    bridge (``AsyncConnection.run_sync``): the claim guard holds on asyncpg and psycopg 3's
    async connection alike, and a dead connection is seen as lost there too."""
    import asyncio
    from datetime import timedelta

    from sqlalchemy.ext.asyncio import create_async_engine

    from chttp_server.decisions import incoming_message
    from chttp_server.store import MessageStore
    from chttp_server.transaction import MessageTransaction

    setup = make_engine(pg_url)
    host_metadata.create_all(setup)
    upgrade(setup)
    message = incoming_message("POST", "/a", "", b"x", message_id="async-1", scope="")

    async def scenario() -> tuple[bool, bool]:
        engine = create_async_engine(pg_url.replace("postgresql://", f"postgresql+{driver}://"))
        store = MessageStore(engine.sync_engine, retention=timedelta(days=1), claim_timeout=2)
        try:
            async with engine.connect() as connection:
                await connection.begin()

                def refused(sync: Any) -> bool:
                    txn = MessageTransaction(store, message.key, retry_after=1, connection=sync,
                                             commit=sync.commit, rollback=sync.rollback)
                    with txn:
                        assert txn.claim(message) is None
                        sync.execute(insert(host_writes).values(message_id="async-1",
                                                                note="before"))
                        sync.exec_driver_sql("ROLLBACK")
                        try:
                            txn.complete(201, [], b"stored?")
                        except HandlerEndedTransaction:
                            return True
                    return False

                ended = await connection.run_sync(refused)
            async with engine.connect() as connection:
                await connection.begin()
                pid = (await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
                with setup.connect() as admin:
                    admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid}, 10000)")
                try:
                    await connection.exec_driver_sql("SELECT 1")
                except Exception:  # noqa: BLE001 - the disconnect itself
                    pass
                lost = await connection.run_sync(store.lost)
                await connection.rollback()
            return ended, lost
        finally:
            await engine.dispose()

    try:
        ended, lost = asyncio.run(scenario())
        assert ended and lost
        assert count_writes(setup) == 0 and message_rows(setup) == []
    finally:
        setup.dispose()
