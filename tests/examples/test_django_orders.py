"""The Django order service (examples/django_orders) through a real waitress and httpx.

Two settings lines (the app and the middleware) must make tutorial Django views —
``Order.objects.create(...)`` — exactly-once on SQLite (orders and messages in one file)
and on PostgreSQL: replays byte for byte, 422 on reuse, one row for concurrent
duplicates, nothing written by a view that writes and then raises (and the retry runs it
again), exactly one write after a SIGKILL before the commit, 503 with the view not run
when the store is down, nothing changed for requests without an id; ``migrate`` creates
the tables and ``chttp_purge`` deletes expired rows. Each project runs in a subprocess
(tests/examples/django_live.py).
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from sqlalchemy import text

from chttp_core import migrate
from chttp_core.db import make_engine
from chttp_server import CertifiedMiddleware, Resource
from tests.examples.django_live import DjangoServer, django_env, manage, runs, scalar
from tests.server.live import serve_in_thread, wait_for

_numbers = itertools.count(1)


class Project:
    """A migrated database, a served Django process, and the shipping service it calls."""

    def __init__(self, db_url: str, test_dir: Path, server: DjangoServer, shipped: list[str]) -> None:
        self.db_url = db_url
        self.test_dir = test_dir
        self.server = server
        self.url = server.url
        self.shipped = shipped

    def orders(self, item: str) -> int:
        return int(scalar(self.db_url, "SELECT count(*) FROM orders_order WHERE item = :item",
                          item=item))

    def stored(self, message_id: str) -> int:
        return int(scalar(self.db_url, "SELECT count(*) FROM chttp_messages WHERE "
                          "message_id = :id", id=message_id))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def project(request, tmp_path_factory) -> Iterator[Project]:
    test_dir = tmp_path_factory.mktemp(f"django-{request.param}")
    if request.param == "sqlite":
        db_url = f"sqlite:///{test_dir / 'orders.db'}"
    else:
        db_url = request.getfixturevalue("pg_cluster").create_database(f"django_{next(_numbers)}")
    shipped: list[str] = []

    class Shipping(Resource):
        def handle_post(self, req: Any) -> dict[str, str]:
            shipped.append(req.chttp.message_id)
            return {"tracking": f"T{len(shipped)}"}

    class Root(Resource):
        children = {"shipments": Shipping()}

    shipping = CertifiedMiddleware(Root(), db_url=f"sqlite:///{test_dir / 'ship.db'}",
                                   upgrade_schema=True)
    try:
        with serve_in_thread(shipping) as ship_base:
            env = django_env(db_url, test_dir, SHIPPING_URL=ship_base)
            manage(env, "migrate")
            with DjangoServer(env, threads=16) as server:
                yield Project(db_url, test_dir, server, shipped)
    finally:
        shipping.engine.dispose()


def order(client: httpx.Client, base: str, message_id: str | None, item: str = "tea",
          quantity: int = 2) -> httpx.Response:
    headers = {"X-Message-ID": message_id} if message_id else {}
    return client.post(f"{base}/orders", json={"item": item, "quantity": quantity}, headers=headers)


def without(response: httpx.Response, *names: str) -> list[tuple[str, str]]:
    skip = {name.lower() for name in ("date", "server", *names)}
    return [(name, value) for name, value in response.headers.items() if name.lower() not in skip]


def test_migrate_created_the_store_tables_at_head(project):
    assert scalar(project.db_url, "SELECT version_num FROM chttp_alembic_version") == \
        migrate.head_revision()
    assert scalar(project.db_url, "SELECT count(*) FROM chttp_oplogs") == 0  # the journal's too
    engine = make_engine(project.db_url)
    try:
        migrate.check_schema(engine)
    finally:
        engine.dispose()


def test_first_request_then_byte_identical_replay_then_422(project):
    with httpx.Client(timeout=30) as client:
        first = order(client, project.url, "o-1", item="replayed")
        again = order(client, project.url, "o-1", item="replayed")
        reused = order(client, project.url, "o-1", item="replayed", quantity=3)
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    assert first.headers["X-Message-URL"] == "/chttp/messages/o-1"
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert without(again, "Idempotent-Replayed") == without(first)
    assert reused.status_code == 422
    assert reused.headers["Content-Type"] == "application/problem+json"
    assert reused.json()["type"] == "message-id-reused"
    assert project.orders("replayed") == 1


def test_cookies_and_headers_are_replayed_as_they_were_sent(project):
    with httpx.Client(timeout=30) as client:
        first = client.post(f"{project.url}/orders/cookie", headers={"X-Message-ID": "c-1"})
        again = client.post(f"{project.url}/orders/cookie", headers={"X-Message-ID": "c-1"})
        head = client.head(f"{project.url}/chttp/messages/c-1")
    assert first.status_code == again.status_code == 201
    assert first.headers.get_list("Set-Cookie") == again.headers.get_list("Set-Cookie")
    assert len(first.headers.get_list("Set-Cookie")) == 2
    assert "SameSite=Strict" in first.headers.get_list("Set-Cookie")[0]
    assert again.headers["X-Order-Count"] == "7"
    assert without(again, "Idempotent-Replayed") == without(first)
    assert head.status_code == 201 and head.content == b""
    assert head.headers.get_list("Set-Cookie") == first.headers.get_list("Set-Cookie")


def test_a_streaming_answer_is_stored_with_the_writes_of_its_generator(project):
    with httpx.Client(timeout=30) as client:
        first = client.post(f"{project.url}/orders/stream", headers={"X-Message-ID": "st-1"})
        again = client.post(f"{project.url}/orders/stream", headers={"X-Message-ID": "st-1"})
    assert first.status_code == 201, first.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert project.orders("streamed") == 1
    assert first.json()["streamed"] == int(scalar(
        project.db_url, "SELECT id FROM orders_order WHERE item = 'streamed'"))


def test_the_message_url_replays_and_acknowledges(project):
    with httpx.Client(timeout=30) as client:
        first = order(client, project.url, "m-1", item="resource")
        replayed = client.get(f"{project.url}/chttp/messages/m-1")
        acknowledged = client.delete(f"{project.url}/chttp/messages/m-1")
        gone = client.get(f"{project.url}/chttp/messages/m-1")
        retry = order(client, project.url, "m-1", item="resource")
        unknown = client.get(f"{project.url}/chttp/messages/never-sent")
        wrong = client.put(f"{project.url}/chttp/messages/m-1")
    assert replayed.status_code == 201
    assert replayed.content == first.content
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert acknowledged.status_code == 204
    assert gone.status_code == 410 and gone.json()["type"] == "message-acknowledged"
    assert retry.status_code == 410  # acknowledged: never run again
    assert unknown.status_code == 404 and unknown.json()["type"] == "message-not-found"
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET, HEAD, DELETE"
    assert project.orders("resource") == 1


def test_refusals_before_the_view_runs(project):
    with httpx.Client(timeout=60) as client:
        too_old = client.post(f"{project.url}/orders/counted", content=b"", headers={
            "X-Message-ID": "old-1", "X-Message-First-Sent": "Sat, 01 Jan 2000 00:00:00 GMT"})
        bad_date = client.post(f"{project.url}/orders/counted", content=b"", headers={
            "X-Message-ID": "old-2", "X-Message-First-Sent": "yesterday"})
        two_ids = client.post(f"{project.url}/orders/counted", content=b"", headers={
            "X-Message-ID": "a-1", "Idempotency-Key": '"b-1"'})
        too_large = client.post(f"{project.url}/orders/counted", content=b"x" * (10 * 1024 * 1024 + 1),
                                headers={"X-Message-ID": "big-1"})
    assert [too_old.status_code, too_old.json()["type"]] == [412, "message-too-old"]
    assert [bad_date.status_code, bad_date.json()["type"]] == [400, "invalid-first-sent"]
    assert [two_ids.status_code, two_ids.json()["type"]] == [400, "invalid-message-id"]
    assert [too_large.status_code, too_large.json()["type"]] == [413, "request-too-large"]
    ran = runs(project.test_dir)
    assert not [line for line in ran if line.split()[-1] in ("old-1", "old-2", "a-1", "big-1")]


def test_concurrent_deliveries_of_one_id_write_one_row(project):
    barrier = threading.Barrier(16)

    def deliver(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait(30)
            return client.post(f"{project.url}/orders/counted", content=b"{}",
                               headers={"X-Message-ID": "dup-1"})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(deliver, range(16)))
    assert {answer.status_code for answer in answers} == {201}, [a.text for a in answers]
    assert len({answer.content for answer in answers}) == 1
    assert answers[0].json() == {"ran": "dup-1"}  # request.chttp.message_id
    assert sum("Idempotent-Replayed" not in answer.headers for answer in answers) == 1
    assert runs(project.test_dir).count("counted dup-1") == 1
    assert project.orders("counted") == 1
    assert project.stored("dup-1") == 1


def test_a_view_that_writes_then_raises_writes_nothing_and_the_retry_runs_again(project):
    with httpx.Client(timeout=30) as client:
        first = client.post(f"{project.url}/orders/explode", content=b"", headers={"X-Message-ID": "x-1"})
        retry = client.post(f"{project.url}/orders/explode", content=b"", headers={"X-Message-ID": "x-1"})
    assert first.status_code == 500
    assert retry.status_code == 500
    assert "Idempotent-Replayed" not in retry.headers
    assert runs(project.test_dir).count("explode x-1") == 2  # ran again: nothing was stored
    assert project.orders("doomed") == 0
    assert project.stored("x-1") == 0


def test_a_429_after_writes_rolls_back_and_the_retry_runs_again(project):
    with httpx.Client(timeout=30) as client:
        first = client.post(f"{project.url}/orders/busy", content=b"", headers={"X-Message-ID": "b-1"})
        retry = client.post(f"{project.url}/orders/busy", content=b"", headers={"X-Message-ID": "b-1"})
    assert first.status_code == retry.status_code == 429
    assert "Idempotent-Replayed" not in retry.headers
    assert "X-Message-URL" not in first.headers
    assert runs(project.test_dir).count("busy b-1") == 2
    assert project.orders("busy") == 0
    assert project.stored("b-1") == 0


@pytest.mark.parametrize("then", ["return", "raise", "write"])
def test_a_view_that_sends_commit_never_wedges_its_message(project, then):
    """``cursor.execute("COMMIT")`` in a view (issue 23): the claim and the order before
    the COMMIT are durable, so the view must not run again, and there is no response to
    replay. Returning normally is refused (HandlerEndedTransaction, Django's 500); every
    retry and the message URL get 410 message-outcome-unknown problem+json, never a bare
    500 until the expiry. A write after the COMMIT is never durable: where the driver
    runs the message in autocommit (psycopg 3 in Django's outermost block,
    chttp_server.fused_transaction.lend; Django's SQLite backend) it would commit on its
    own, and psycopg2 would send it without BEGIN, so it is refused unsent
    (fused_transaction.guard; on SQLite chttp_server.django.threads)."""
    message_id = f"commits-{then}"
    item = f"committed-{then}"
    url = f"{project.url}/orders/commits?item={item}&then={then}"
    with httpx.Client(timeout=30) as client:
        first = client.post(url, content=b"{}", headers={"X-Message-ID": message_id})
        retries = [client.post(url, content=b"{}", headers={"X-Message-ID": message_id})
                   for _ in range(2)]
        fetched = client.get(f"{project.url}/chttp/messages/{message_id}")
    assert first.status_code == 500
    for answer in (*retries, fetched):
        assert answer.status_code == 410, answer.text
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.json()["type"] == "message-outcome-unknown"
    assert project.orders(item) == 1
    assert project.orders(f"{item}-after") == 0
    assert runs(project.test_dir).count(f"commits {message_id}") == 1
    assert scalar(project.db_url, "SELECT count(*) FROM chttp_messages WHERE message_id = "
                  ":id AND status IS NULL", id=message_id) == 1


def test_a_body_over_djangos_upload_limit_is_413_problem_json(project):
    """Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB by default) is below the certified cap
    (10 MiB): a certified body between the two is 413 request-too-large problem+json, the
    view never runs, nothing is stored (was: Django's HTML 400). Below it, served."""
    big = b"x" * (3 * 1024 * 1024)
    with httpx.Client(timeout=60) as client:
        refused = client.post(f"{project.url}/orders/counted", content=big,
                              headers={"X-Message-ID": "big-1"})
        served = client.post(f"{project.url}/orders/counted", content=b"x" * 1024,
                             headers={"X-Message-ID": "big-2"})
    assert refused.status_code == 413, refused.text
    assert refused.headers["Content-Type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"] == "request-too-large" and "2621440 bytes" in problem["detail"]
    assert served.status_code == 201
    assert "counted big-1" not in runs(project.test_dir)
    assert project.stored("big-1") == 0


@pytest.mark.parametrize("upload_max,warned", [
    pytest.param(None, True, id="django-default"),
    pytest.param(str(10 * 1024 * 1024), False, id="raised-to-ours"),
])
def test_the_system_check_names_djangos_upload_limit(tmp_path, upload_max, warned):
    env = django_env(f"sqlite:///{tmp_path / 'check.db'}", tmp_path)
    if upload_max is not None:
        env["CHTTP_TEST_UPLOAD_MAX"] = upload_max
    done = manage(env, "check")
    output = done.stdout + done.stderr
    assert ("chttp.W001" in output) is warned, output
    if warned:
        assert "DATA_UPLOAD_MAX_MEMORY_SIZE (2621440 bytes)" in output
        assert "CHTTP['MAX_REQUEST_BYTES'] (10485760 bytes)" in output


def test_requests_without_an_id_are_unchanged(project):
    with httpx.Client(timeout=30) as client:
        created = order(client, project.url, None, item="plain")
        again = order(client, project.url, None, item="plain")
        listed = client.get(f"{project.url}/orders")
        counted = client.post(f"{project.url}/orders/counted", content=b"")
    assert created.status_code == again.status_code == 201
    assert "X-Message-URL" not in created.headers
    assert created.json()["id"] != again.json()["id"]
    assert [row["item"] for row in listed.json()["orders"]].count("plain") == 2
    assert project.orders("plain") == 2
    assert counted.json() == {"ran": None}  # request.chttp is None without an id


def test_a_certified_send_from_a_view_happens_once(project):
    with httpx.Client(timeout=30) as client:
        created = order(client, project.url, "s-order", item="shipped")
        order_id = created.json()["id"]
        first = client.post(f"{project.url}/orders/{order_id}/ship", headers={"X-Message-ID": "s-ship"})
        again = client.post(f"{project.url}/orders/{order_id}/ship", headers={"X-Message-ID": "s-ship"})
        listed = client.get(f"{project.url}/orders").json()["orders"]
    assert first.status_code == 200, first.text
    assert first.json()["tracking"] == "T1"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert len(project.shipped) == 1
    assert [row["tracking"] for row in listed if row["item"] == "shipped"] == ["T1"]


def test_chttp_purge_deletes_expired_messages(project):
    with httpx.Client(timeout=30) as client:
        assert order(client, project.url, "p-1", item="purged").status_code == 201
        assert order(client, project.url, "p-2", item="purged").status_code == 201
    engine = make_engine(project.db_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE chttp_messages SET expires_at = :past "
                                    "WHERE message_id = 'p-1'"), {"past": "2000-01-01 00:00:00"})
    finally:
        engine.dispose()
    done = manage(django_env(project.db_url, project.test_dir), "chttp_purge",
                  "--batch-size", "1", "--pause", "0.01", "--share", "0.5")
    assert "deleted 1 expired message" in done.stdout
    assert project.stored("p-1") == 0
    assert project.stored("p-2") == 1


def test_store_down_is_503_and_the_view_does_not_run(pg_cluster, tmp_path):
    db_url = pg_cluster.create_database(f"django_down_{next(_numbers)}")
    env = django_env(db_url, tmp_path)
    manage(env, "migrate")
    database = db_url.rsplit("/", 1)[-1]
    admin = make_engine(pg_cluster.url(), isolation_level="AUTOCOMMIT")
    try:
        with DjangoServer(env) as server, httpx.Client(timeout=30) as client:
            assert client.post(f"{server.url}/orders/counted", headers={"X-Message-ID": "d-0"}).status_code == 201
            with admin.connect() as connection:
                connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
                connection.execute(text(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                    "WHERE datname = :name"), {"name": database})
            down = client.post(f"{server.url}/orders/counted", headers={"X-Message-ID": "d-1"})
            with admin.connect() as connection:
                connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
            back = client.post(f"{server.url}/orders/counted", headers={"X-Message-ID": "d-1"})
    finally:
        admin.dispose()
    assert down.status_code == 503, down.text
    assert down.json()["type"] == "store-unavailable"
    assert int(down.headers["Retry-After"]) >= 1
    assert database not in down.text
    assert back.status_code == 201
    assert runs(tmp_path) == ["counted d-0", "counted d-1"]  # d-1 ran once, after the store came back


def test_a_connection_lost_under_the_view_is_503_and_nothing_is_written(project):
    if not project.db_url.startswith("postgresql"):
        pytest.skip("a SQLite connection cannot be lost")
    with httpx.Client(timeout=30) as client:
        lost = client.post(f"{project.url}/orders/severed", content=b"",
                           headers={"X-Message-ID": "sv-1"})
        after = order(client, project.url, "sv-2", item="after-severed")
    assert lost.status_code == 503, lost.text
    assert lost.json()["type"] == "store-unavailable"
    assert "Retry-After" in lost.headers
    assert project.orders("severed") == 0
    assert project.stored("sv-1") == 0
    assert after.status_code == 201  # the thread's next request has a working connection


def test_a_project_whose_database_is_down_at_start_up_starts_and_answers_503(pg_cluster, tmp_path):
    db_url = pg_cluster.create_database(f"django_down_{next(_numbers)}")
    env = django_env(db_url, tmp_path)
    manage(env, "migrate")
    database = db_url.rsplit("/", 1)[-1]
    admin = make_engine(pg_cluster.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        with DjangoServer(env) as server, httpx.Client(timeout=30) as client:
            down = client.post(f"{server.url}/orders/counted", headers={"X-Message-ID": "u-1"})
            with admin.connect() as connection:
                connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
            back = client.post(f"{server.url}/orders/counted", headers={"X-Message-ID": "u-1"})
    finally:
        admin.dispose()
    assert down.status_code == 503, down.text
    assert down.json()["type"] == "store-unavailable"
    assert back.status_code == 201
    assert runs(tmp_path) == ["counted u-1"]


@pytest.mark.slow
def test_sigkill_after_the_views_writes_before_the_commit_then_the_retry_writes_once(db_url, tmp_path):
    env = django_env(db_url, tmp_path)
    manage(env, "migrate")
    hold = tmp_path / "hold"
    reached = tmp_path / "reached"
    hold.touch()

    def send(base: str) -> httpx.Response:
        return httpx.post(f"{base}/orders/held", content=b"", headers={"X-Message-ID": "k-1"},
                          timeout=60)

    doomed = DjangoServer(env)
    try:
        with ThreadPoolExecutor(1) as pool:
            lost = pool.submit(send, doomed.url)
            wait_for(reached.exists, what="the view to stop after its write")
            doomed.kill()
            with pytest.raises(httpx.TransportError):
                lost.result()
    finally:
        doomed.kill()
    hold.unlink()
    with DjangoServer(env) as survivor:
        retry = send(survivor.url)
        replay = send(survivor.url)
    assert retry.status_code == 201, retry.text
    assert "Idempotent-Replayed" not in retry.headers
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert scalar(db_url, "SELECT count(*) FROM orders_order WHERE item = 'held'") == 1
