"""The ASGI middleware in process (httpx's ASGITransport): the rules it shares with WSGI,
its configuration errors, and what it leaves alone."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from chttp_server import store_dbapi
from chttp_server.asgi import CertifiedMiddleware, current_message, require_for_methods
from chttp_server.errors import ConfigurationError
from chttp_server.store import MessageStore
from chttp_server.transaction import MessageTransaction
from tests.asgi.conftest import as_driver



def _counting_app() -> tuple[Starlette, list[str]]:
    """A plain Starlette app (not FastAPI): every run of its view is recorded."""
    runs: list[str] = []

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        message = current_message()
        runs.append(body.decode())
        return JSONResponse({"body": body.decode(), "run": len(runs),
                             "id": message.message_id if message else None,
                             "scope": message.scope if message else None}, status_code=201)

    return Starlette(routes=[Route("/echo", echo, methods=["POST", "PUT"])]), runs


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def _dispose(engine: AsyncEngine) -> None:
    await engine.dispose()


def test_the_async_front_end_runs_the_one_claim_of_the_core(async_db_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """No second copy: the claim is MessageTransaction.claim → MessageStore.claim, and on
    PostgreSQL the statement sent is the core's own claim text."""
    calls: list[str] = []
    for owner, name in ((MessageTransaction, "claim"), (MessageStore, "claim"),
                        (MessageTransaction, "complete"), (MessageStore, "complete")):
        real = getattr(owner, name)

        def spy(*args: Any, _real: Any = real, _label: str = f"{owner.__name__}.{name}",
                **kwargs: Any) -> Any:
            calls.append(_label)
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    engine = create_async_engine(async_db_url)
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_rest: statements.append(statement))
    app, runs = _counting_app()

    async def scenario() -> None:
        async with _client(CertifiedMiddleware(app, engine=engine, upgrade_schema=True)) as client:
            message_id = str(uuid.uuid4())
            for _ in range(2):
                answer = await client.post("/echo", content=b"one", headers={"X-Message-ID": message_id})
                assert answer.status_code == 201
        await engine.dispose()

    asyncio.run(scenario())
    assert runs == ["one"]
    assert calls.count("MessageTransaction.claim") == calls.count("MessageStore.claim") == 2
    assert calls.count("MessageTransaction.complete") == calls.count("MessageStore.complete") == 1
    if engine.dialect.name == "postgresql":  # straight to the adapter's cursor
        claim_sql = (store_dbapi.NUMBERED[store_dbapi.CLAIM][0]
                     if engine.dialect.driver == "asyncpg" else store_dbapi.CLAIM)
        assert statements.count(claim_sql) == 2


def test_the_principal_is_the_authenticated_user(sqlite_url: str) -> None:
    class HeaderAuth(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> Any:
            user = conn.headers.get("x-user")
            return (AuthCredentials(["authenticated"]), SimpleUser(user)) if user else None

    inner, runs = _counting_app()
    engine = create_async_engine(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://"))
    certified = CertifiedMiddleware(inner, engine=engine, upgrade_schema=True)
    app = Starlette(routes=[], middleware=[Middleware(AuthenticationMiddleware, backend=HeaderAuth())])
    app.mount("/", certified)

    async def scenario() -> list[httpx.Response]:
        async with _client(app) as client:
            answers = [await client.post("/echo", content=b"x",
                                         headers={"X-Message-ID": "same-id", "X-User": user})
                       for user in ("alice", "bob", "alice")]
        await engine.dispose()
        return answers

    alice, bob, alice_again = asyncio.run(scenario())
    assert [alice.json()["scope"], bob.json()["scope"]] == ["alice", "bob"]
    assert alice_again.headers["Idempotent-Replayed"] == "true"
    assert runs == ["x", "x"]  # one run per principal: each has its own id space


def test_protocol_refusals_are_problem_json_and_run_nothing(sqlite_url: str) -> None:
    app, runs = _counting_app()
    engine = create_async_engine(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://"))
    middleware = CertifiedMiddleware(app, engine=engine, upgrade_schema=True, max_request_bytes=10,
                                     require_id=require_for_methods("PUT"))

    async def scenario() -> dict[str, httpx.Response]:
        async with _client(middleware) as client:
            answers = {
                "malformed": await client.post("/echo", content=b"x", headers={"X-Message-ID": "a b"}),
                "too-large": await client.post("/echo", content=b"x" * 11, headers={"X-Message-ID": "big"}),
                "required": await client.put("/echo", content=b"x"),
                "first-sent": await client.post("/echo", content=b"x", headers={
                    "X-Message-ID": "fs", "X-Message-First-Sent": "yesterday"}),
                "conflicting": await client.post("/echo", content=b"x", headers={
                    "X-Message-ID": "one", "Idempotency-Key": "two"}),
            }
        await engine.dispose()
        return answers

    answers = asyncio.run(scenario())
    assert {name: answer.status_code for name, answer in answers.items()} == {
        "malformed": 400, "too-large": 413, "required": 400, "first-sent": 400, "conflicting": 400}
    for answer in answers.values():
        assert answer.headers["content-type"] == "application/problem+json"
    assert runs == []


def test_lifespan_and_websocket_scopes_pass_through_untouched(sqlite_url: str) -> None:
    seen: list[tuple[str, Any]] = []

    async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((scope["type"], scope.get("chttp.middleware")))
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})

    _existing(sqlite_url)
    engine = create_async_engine(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://"))
    middleware = CertifiedMiddleware(raw_app, engine=engine)
    sent: list[dict[str, Any]] = []

    async def scenario() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        await middleware({"type": "websocket", "path": "/ws", "headers": [(b"x-message-id", b"m")]},
                         receive, send)
        await engine.dispose()

    asyncio.run(scenario())
    assert seen == [("lifespan", None), ("websocket", None)]
    assert sent == [{"type": "lifespan.startup.complete"}]


def _existing(sqlite_url: str) -> None:
    """Make the (empty) SQLite file: without upgrade_schema a missing one is refused."""
    sqlite3.connect(sqlite_url.removeprefix("sqlite:///")).close()


def test_configuration_mistakes_raise_at_construction(sqlite_url: str) -> None:
    app, _runs = _counting_app()
    _existing(sqlite_url)
    sync_engine = create_engine(sqlite_url)
    with pytest.raises(ConfigurationError, match="AsyncEngine"):
        CertifiedMiddleware(app, engine=sync_engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="synchronous driver"):
        CertifiedMiddleware(app, db_url="postgresql+psycopg2://u@localhost/db")
    with pytest.raises(ConfigurationError, match="exactly one"):
        CertifiedMiddleware(app)
    with pytest.raises(ConfigurationError, match="sessionmaker"):
        CertifiedMiddleware(app, db_url=sqlite_url, sessions=object())
    certified = CertifiedMiddleware(app, db_url=sqlite_url)
    with pytest.raises(ConfigurationError, match="already applied"):
        CertifiedMiddleware(certified, db_url=sqlite_url)
    sync_engine.dispose()


def test_stacked_twice_on_one_path_is_refused(sqlite_url: str) -> None:
    app, runs = _counting_app()
    inner = CertifiedMiddleware(app, db_url=sqlite_url, upgrade_schema=True)
    outer = CertifiedMiddleware(Starlette(routes=[]), db_url=sqlite_url, upgrade_schema=True)
    outer.app = inner  # what a second add_middleware of another instance amounts to

    async def scenario() -> None:
        async with _client(outer) as client:
            with pytest.raises(ConfigurationError, match="stacked twice"):
                await client.post("/echo", content=b"x")
        await inner.engine.dispose()
        await outer.engine.dispose()

    asyncio.run(scenario())
    assert runs == []


def test_a_waiting_duplicate_does_not_block_the_loop(pg_url: str) -> None:
    """While a duplicate's claim waits on the first delivery's row lock (PostgreSQL), the
    event loop keeps running: a coroutine on it sees the wait in pg_locks and only then
    lets the first delivery finish. A claim that blocked the loop would deadlock here."""
    release = asyncio.Event()

    async def held(request: Request) -> PlainTextResponse:
        await release.wait()
        return PlainTextResponse("done", status_code=201)

    app = Starlette(routes=[Route("/held", held, methods=["POST"])])
    url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
    engine = create_async_engine(url)
    middleware = CertifiedMiddleware(app, engine=engine, upgrade_schema=True, claim_timeout=30)
    observer = create_async_engine(url)

    async def a_claim_waits_on_a_lock() -> None:
        while True:
            async with observer.connect() as connection:
                waiting = await connection.scalar(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"))
            if waiting:
                release.set()
                return
            await asyncio.sleep(0.01)

    async def scenario() -> list[httpx.Response]:
        async with _client(middleware) as client:
            first = asyncio.create_task(client.post("/held", headers={"X-Message-ID": "held"}))
            await asyncio.sleep(0)
            second = asyncio.create_task(client.post("/held", headers={"X-Message-ID": "held"}))
            await asyncio.wait_for(a_claim_waits_on_a_lock(), timeout=60)
            answers = [await first, await second]
        await engine.dispose()
        await observer.dispose()
        return answers

    answers = asyncio.run(scenario())
    assert [answer.status_code for answer in answers] == [201, 201]
    # Whichever task claimed first ran the view; the other waited and got its answer.
    assert sorted(answer.headers.get("Idempotent-Replayed", "") for answer in answers) == ["", "true"]


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_a_duplicate_waiting_past_the_claim_timeout_is_409_in_progress(pg_url: str, driver: str) -> None:
    """docs/protocol.rst §4: a duplicate that waits on the first delivery's claim for
    longer than ``claim_timeout`` is answered 409 message-in-progress with Retry-After,
    and the first delivery's answer is unaffected. (On asyncpg the lock timeout reaches
    SQLAlchemy as a plain DBAPIError, not an OperationalError: it was answered 500.)"""
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(request: Request) -> PlainTextResponse:
        entered.set()  # the first delivery claimed: its row is locked until it commits
        await release.wait()
        return PlainTextResponse("done", status_code=201)

    app = Starlette(routes=[Route("/held", held, methods=["POST"])])
    engine = create_async_engine(as_driver(pg_url, driver))
    middleware = CertifiedMiddleware(app, engine=engine, upgrade_schema=True, claim_timeout=0.3)

    async def scenario() -> list[httpx.Response]:
        async with _client(middleware) as client:
            first = asyncio.create_task(client.post("/held", headers={"X-Message-ID": "slow"}))
            await asyncio.wait_for(entered.wait(), timeout=60)
            second = await client.post("/held", headers={"X-Message-ID": "slow"})
            release.set()
            answers = [await first, second]
        await engine.dispose()
        return answers

    first, second = asyncio.run(scenario())
    assert first.status_code == 201
    assert second.status_code == 409
    assert second.headers["Content-Type"] == "application/problem+json"
    assert second.json()["type"].endswith("message-in-progress")
    assert int(second.headers["Retry-After"]) >= 1


def test_joined_sessions_commit_with_the_message_and_roll_back_only_their_own_work(
        async_db_url: str) -> None:
    """A view's ``await session.rollback()`` undoes its own work since its last commit;
    what it committed stays in the message's transaction and is durable with the stored
    response; a view that answers 5xx leaves nothing behind."""
    from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
    from sqlalchemy.ext.asyncio import async_sessionmaker

    metadata = MetaData()
    notes = Table("notes", metadata, Column("id", Integer, primary_key=True), Column("text", String(50)))
    engine = create_async_engine(async_db_url)
    Session = async_sessionmaker(engine)

    async def write(request: Request) -> PlainTextResponse:
        status = int(request.query_params.get("status", "201"))
        async with Session() as session:
            await session.execute(insert(notes).values(text=f"kept-{status}"))
            await session.commit()
            await session.execute(insert(notes).values(text=f"undone-{status}"))
            await session.rollback()
        return PlainTextResponse("written", status_code=status)

    app = Starlette(routes=[Route("/write", write, methods=["POST"])])
    middleware = CertifiedMiddleware(app, engine=engine, sessions=Session, upgrade_schema=True)

    async def scenario() -> list[str]:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        async with _client(middleware) as client:
            assert (await client.post("/write", headers={"X-Message-ID": "w1"})).status_code == 201
            failed = await client.post("/write?status=500", headers={"X-Message-ID": "w2"})
            assert failed.status_code == 500 and "X-Message-URL" not in failed.headers
        async with engine.connect() as connection:
            texts = list(await connection.scalars(select(notes.c.text).order_by(notes.c.id)))
        await engine.dispose()
        return texts

    assert asyncio.run(scenario()) == ["kept-201"]


def test_a_body_cut_short_is_400_and_runs_nothing(sqlite_url: str) -> None:
    app, runs = _counting_app()
    middleware = CertifiedMiddleware(app, db_url=sqlite_url, upgrade_schema=True)
    sent: list[dict[str, Any]] = []
    arrivals = iter([{"type": "http.request", "body": b"par", "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(arrivals)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/echo", "root_path": "",
             "query_string": b"", "headers": [(b"x-message-id", b"cut"), (b"content-length", b"10")]}

    async def scenario() -> None:
        await middleware(scope, receive, send)
        await middleware.engine.dispose()

    asyncio.run(scenario())
    assert sent[0]["status"] == 400
    assert b"incomplete-body" in sent[1]["body"]
    assert runs == []


@pytest.mark.parametrize("statement", ["COMMIT", "ROLLBACK"])
def test_a_view_that_ends_the_transaction_with_sql_never_wedges_its_message(
        async_db_url: str, statement: str) -> None:
    """Issue 23 through the ASGI front end: the core's claim guard refuses to store a
    response outside the claiming transaction; every retry gets a protocol answer."""
    runs: list[int] = []

    async def ender(request: Request) -> PlainTextResponse:
        message = current_message()
        assert message is not None
        runs.append(1)
        await message.connection.exec_driver_sql(statement)
        return PlainTextResponse("done", status_code=201)

    app = Starlette(routes=[Route("/end", ender, methods=["POST"])])
    engine = create_async_engine(async_db_url)
    middleware = CertifiedMiddleware(app, engine=engine, upgrade_schema=True)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=middleware, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answers = [await client.post("/end", headers={"X-Message-ID": "ends"}) for _ in range(3)]
        await engine.dispose()
        return answers

    first, *retries = asyncio.run(scenario())
    assert first.status_code == 500  # HandlerEndedTransaction: nothing stored
    for retry in retries:
        # After a COMMIT the claim is durable without its response: the outcome is
        # unknown and said so; after a ROLLBACK nothing is left and the view runs again.
        assert retry.status_code in (410, 500)
        assert retry.status_code != 201
    if statement == "COMMIT":
        assert [r.status_code for r in retries] == [410, 410]
        assert all(r.json()["type"] == "message-outcome-unknown" for r in retries)
        assert runs == [1]
    else:
        assert runs == [1, 1, 1]


def test_a_views_persisted_values_survive_its_rollback(sqlite_url: str, tmp_path: Any) -> None:
    """``await current_message().persist(coroutine_function)`` runs it on the first
    delivery only: the retry of a rolled-back view gets the recorded value back."""
    from chttp_client import Journal

    drawn: list[str] = []

    async def draw() -> str:
        drawn.append(uuid.uuid4().hex)
        return drawn[-1]

    async def view(request: Request) -> PlainTextResponse:
        message = current_message()
        assert message is not None
        token = await message.persist(draw)
        fail = request.query_params.get("fail") == "1"
        return PlainTextResponse(token, status_code=503 if fail else 201)

    journal = Journal(f"sqlite:///{tmp_path / 'outgoing.db'}")
    app = Starlette(routes=[Route("/token", view, methods=["POST"])])
    middleware = CertifiedMiddleware(app, db_url=sqlite_url, upgrade_schema=True, journal=journal)

    async def scenario() -> list[httpx.Response]:
        async with _client(middleware) as client:
            answers = [await client.post("/token?fail=1", headers={"X-Message-ID": "tok"}),
                       await client.post("/token?fail=1", headers={"X-Message-ID": "tok"})]
        await middleware.engine.dispose()
        return answers

    first, retry = asyncio.run(scenario())
    journal.close()
    assert first.status_code == retry.status_code == 503
    assert first.text == retry.text == drawn[0]
    assert len(drawn) == 1


def test_the_asgi_public_api_is_pinned() -> None:
    import chttp_server.asgi

    assert sorted(chttp_server.asgi.__all__) == sorted([
        "AsyncCertifiedContext", "CertifiedMiddleware", "current_message", "make_async_engine",
        "require_for_methods", "user_scope"])
    for name in chttp_server.asgi.__all__:
        assert getattr(chttp_server.asgi, name) is not None


@pytest.mark.parametrize("bad, words", [
    pytest.param({"retention": __import__("datetime").timedelta(0)}, "retention must be positive", id="retention"),
    pytest.param({"claim_timeout": 0}, "claim_timeout must be positive", id="claim_timeout"),
    pytest.param({"max_response_bytes": -1}, "max_response_bytes", id="max_response_bytes"),
    pytest.param({"max_request_bytes": -1}, "max_request_bytes", id="max_request_bytes"),
    pytest.param({"message_prefix": "chttp"}, "message_prefix", id="message_prefix"),
    pytest.param({"retry_after": -1}, "retry_after", id="retry_after"),
    pytest.param({"handler_send_deadline": __import__("datetime").timedelta(0)},
                 "handler_send_deadline", id="handler_send_deadline"),
])
def test_both_front_ends_refuse_the_same_bad_options_with_the_same_words(
        sqlite_url: str, bad: dict[str, Any], words: str) -> None:
    from chttp_server import CertifiedMiddleware as WsgiCertifiedMiddleware

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        return []

    app, _runs = _counting_app()
    with pytest.raises(ConfigurationError, match=words) as asgi_error:
        CertifiedMiddleware(app, db_url=sqlite_url, upgrade_schema=True, **bad)
    with pytest.raises(ConfigurationError, match=words) as wsgi_error:
        WsgiCertifiedMiddleware(wsgi_app, db_url=sqlite_url, upgrade_schema=True, **bad)
    assert str(asgi_error.value) == str(wsgi_error.value)
