"""The store going away (docs/protocol.rst §4): fail closed, keep serving the rest, recover.

These tests own a PostgreSQL cluster of their own and stop it with ``pg_ctl`` mid-traffic
(the session cluster is shared with every other test and must stay up). The wrapped
application counts its runs in process memory, outside the database, so "the app was
not run" is proven by a counter the outage cannot roll back.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest
import webob
import webtest
from sqlalchemy import insert

from chttp_core.db import make_engine
from chttp_server import CertifiedMiddleware, get_context
from chttp_core.migrate import upgrade
from chttp_server.testing import PostgresCluster

from .apps import count_writes, host_metadata, host_writes
from .live import wait_for

pytestmark = pytest.mark.slow


class CountingApp:
    """A plain WSGI app: counts every run in memory, writes a row when certified."""

    def __init__(self) -> None:
        self.certified_runs: list[str] = []
        self.plain_runs = 0
        self.entered = threading.Event()
        self.release: threading.Event | None = None

    def __call__(self, environ, start_response):
        context = get_context(environ)
        if context is None:
            self.plain_runs += 1
            return webob.Response(text="plain, no store needed")(environ, start_response)
        self.certified_runs.append(context.message_id)
        context.connection.execute(
            insert(host_writes).values(message_id=context.message_id, note="outage")
        )
        if self.release is not None:
            self.entered.set()
            self.release.wait(30)
        return webob.Response(json_body={"ran": context.message_id})(environ, start_response)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(settings={"fsync": "off", "full_page_writes": "off"})
    cluster.start()
    yield cluster
    cluster.destroy()


_numbers = iter(range(1, 1000))


@pytest.fixture
def outage_url(cluster) -> str:
    if not cluster.running:
        cluster.start()
    url = cluster.create_database(f"outage_{next(_numbers)}")
    engine = make_engine(url)
    try:
        host_metadata.create_all(engine)
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def post(app, message_id: str, status="*"):
    return app.post("/pay", b"10", headers={"X-Message-ID": message_id}, status=status)


def assert_store_unavailable(response) -> None:
    assert response.status_int == 503
    assert response.content_type == "application/problem+json"
    assert response.json["type"] == "store-unavailable"
    assert int(response.headers["Retry-After"]) >= 1


def test_store_down_mid_traffic_fails_closed_and_recovers(cluster, outage_url):
    counting = CountingApp()
    middleware = CertifiedMiddleware(counting, db_url=outage_url, retry_after=3)
    app = webtest.TestApp(middleware)
    try:
        assert post(app, "before").status_int == 200  # leaves a pooled connection behind
        assert counting.certified_runs == ["before"]

        cluster.stop()
        for message_id in ("during-1", "during-2"):
            response = post(app, message_id)
            assert_store_unavailable(response)
            assert response.headers["Retry-After"] == "3"
        assert_store_unavailable(post(app, "before"))  # even a replay needs the store
        assert_store_unavailable(app.get("/chttp/messages/before", status="*"))
        assert_store_unavailable(app.delete("/chttp/messages/before", status="*"))
        assert counting.certified_runs == ["before"], "the app ran without its store"
        # Requests that are not certified never needed the store: they still pass.
        assert app.get("/plain").text == "plain, no store needed"
        assert counting.plain_runs == 1

        cluster.start()
        # The pooled connection died with the server; the claim retries on a fresh one.
        recovered = post(app, "during-1")
        assert recovered.status_int == 200
        assert "Idempotent-Replayed" not in recovered.headers
        replay = post(app, "before")
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert counting.certified_runs == ["before", "during-1"]
        assert count_writes(middleware.engine, "outage") == 2
    finally:
        middleware.engine.dispose()


def test_store_lost_while_the_handler_runs_rolls_back_and_the_retry_runs_once(cluster, outage_url):
    counting = CountingApp()
    counting.release = threading.Event()
    middleware = CertifiedMiddleware(counting, db_url=outage_url)
    app = webtest.TestApp(middleware)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_flight = pool.submit(post, app, "mid")
            wait_for(counting.entered.is_set, what="the handler to be mid-transaction")
            cluster.stop()  # "fast": the server terminates the handler's session
            counting.release.set()
            assert_store_unavailable(in_flight.result())
        cluster.start()
        retry = post(app, "mid")
        assert retry.status_int == 200
        assert "Idempotent-Replayed" not in retry.headers
        assert counting.certified_runs == ["mid", "mid"]  # ran again: nothing had committed
        assert count_writes(middleware.engine, "outage") == 1
    finally:
        middleware.engine.dispose()


def test_middleware_built_while_the_store_is_down_starts_and_answers_503(cluster, outage_url):
    cluster.stop()
    counting = CountingApp()
    middleware = CertifiedMiddleware(counting, db_url=outage_url)  # must not raise
    app = webtest.TestApp(middleware)
    try:
        assert_store_unavailable(post(app, "early"))
        assert counting.certified_runs == []
        assert app.get("/plain").status_int == 200

        cluster.start()
        response = post(app, "early")
        assert response.status_int == 200
        assert counting.certified_runs == ["early"]
        assert count_writes(middleware.engine, "outage") == 1
    finally:
        middleware.engine.dispose()


def test_store_back_with_a_schema_behind_the_code_keeps_answering_503(cluster):
    if not cluster.running:
        cluster.start()
    url = cluster.create_database("outage_no_schema")
    cluster.stop()
    counting = CountingApp()
    middleware = CertifiedMiddleware(counting, db_url=url)
    app = webtest.TestApp(middleware)
    try:
        assert_store_unavailable(post(app, "x"))
        cluster.start()
        response = post(app, "x")
        assert_store_unavailable(response)
        assert "chttp-server db upgrade" in response.json["detail"]
        assert counting.certified_runs == []

        upgrade(url)
        engine = make_engine(url)
        host_metadata.create_all(engine)
        engine.dispose()
        assert post(app, "x").status_int == 200
    finally:
        middleware.engine.dispose()


def test_a_pooled_connection_the_server_dropped_is_replaced_without_an_error(cluster, outage_url):
    """No pre-ping on the store's engine: the claim meets the dead connection and is
    retried once on a fresh one, so the sender never sees the drop (issue 12)."""
    counting = CountingApp()
    middleware = CertifiedMiddleware(counting, db_url=outage_url)
    assert middleware.engine.pool._pre_ping is False  # the retry, not a ping, recovers
    app = webtest.TestApp(middleware)
    killer = make_engine(outage_url)
    try:
        assert post(app, "first").status_int == 200  # leaves a pooled connection behind
        with killer.begin() as connection:
            killed = connection.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).scalar_one()
        assert killed >= 1
        response = post(app, "second")
        assert response.status_int == 200
        assert "Idempotent-Replayed" not in response.headers
        assert post(app, "first").headers["Idempotent-Replayed"] == "true"
        assert counting.certified_runs == ["first", "second"]
        assert count_writes(middleware.engine, "outage") == 2
    finally:
        killer.dispose()
        middleware.engine.dispose()


_serve_numbers = iter(range(1, 1000))


@pytest.mark.parametrize("upgrade_flag", [pytest.param(False, id="schema-there"),
                                          pytest.param(True, id="with-upgrade")])
def test_serve_starts_while_the_store_is_down_then_serves_when_it_returns(cluster, upgrade_flag):
    """``chttp-server serve`` (the real command, a real process) with PostgreSQL stopped
    (issue 23, item 2): it starts, answers certified requests 503 store-unavailable while
    the store is down, and serves 201 soon after the store is back — with ``--upgrade``
    on an empty database, after creating the schema then. Prints how soon."""
    import time

    import httpx

    from .live import ServerProcess

    if not cluster.running:
        cluster.start()
    url = cluster.create_database(f"serve_down_{next(_serve_numbers)}")
    engine = make_engine(url)
    host_metadata.create_all(engine)
    if not upgrade_flag:
        upgrade(engine)  # without --upgrade the schema must be there already
    engine.dispose()
    cluster.stop()
    try:
        extra = ("--upgrade",) if upgrade_flag else ()
        with ServerProcess("tests.server.apps:Echo", url, extra_args=extra) as server:
            def post() -> httpx.Response:
                return httpx.post(f"{server.url}/", content=b"down",
                                  headers={"X-Message-ID": "sd-1"}, timeout=30)

            while_down = [post() for _ in range(3)]
            for answer in while_down:
                assert answer.status_code == 503, answer.text
                assert answer.json()["type"] == "store-unavailable"
                assert "Retry-After" in answer.headers
            plain = httpx.get(f"{server.url}/", timeout=30)
            assert plain.status_code == 405  # not certified: served without the store
            cluster.start()
            back = time.monotonic()
            answer = post()
            while answer.status_code == 503:
                time.sleep(0.05)
                answer = post()
            took = time.monotonic() - back
            assert answer.status_code == 201, answer.text
            assert post().headers["Idempotent-Replayed"] == "true"
            print(f"\nserve {'--upgrade ' if upgrade_flag else ''}started with the store "
                  f"down: first 201 {took:.2f} s after the store accepted connections")
    finally:
        if not cluster.running:
            cluster.start()
    engine = make_engine(url)
    try:
        assert count_writes(engine, "echo") == 1
    finally:
        engine.dispose()
