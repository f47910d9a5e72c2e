"""The Django order service under ASGI: ``get_asgi_application()`` served by uvicorn.

Issue 19 item 5. The same two settings lines as under WSGI make sync and async views
exactly-once: Django's ASGI handler runs the certified middleware, sync views and every
thread-sensitive ``sync_to_async`` call of an async view (the async ORM: ``acreate``)
in the request's one thread, on the connection that holds the message's transaction
(chttp_server/django/threads.py). Tested through a real uvicorn process and httpx, on
SQLite and PostgreSQL, for a sync view and an async one: a retry replays byte for
byte, reuse is 422, 16 concurrent deliveries write one row and get one answer, a view
that writes then raises writes nothing and its retry runs again; an async generator's
writes are stored with its streamed answer; a client that gives up mid-view leaves
exactly one write; an async view's certified send (``sync_to_async(request.chttp.post)``)
happens once; a statement an async view sends from another thread
(``thread_sensitive=False``), which would commit outside the message, is refused.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from chttp_server import CertifiedMiddleware, Resource
from tests.asgi.live import UvicornProcess
from tests.examples.django_live import django_env, manage, runs, scalar
from tests.server.live import serve_in_thread, wait_for

_numbers = itertools.count(1)

ASGI_APP = "chttp_examples.django_orders.asgi:application"

#: A sync view and an async one that each write one order named after the view.
VIEWS = [pytest.param("counted", id="sync-view"), pytest.param("acounted", id="async-view")]


class AsgiProject:
    """A migrated database, the project served by uvicorn through Django's ASGI handler,
    and the shipping service its ship views call."""

    def __init__(self, db_url: str, test_dir: Path, server: UvicornProcess,
                 shipped: list[str]) -> None:
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

    def runs(self, line: str) -> int:
        return runs(self.test_dir).count(line)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def project(request, tmp_path_factory) -> Iterator[AsgiProject]:
    test_dir = tmp_path_factory.mktemp(f"django-asgi-{request.param}")
    if request.param == "sqlite":
        db_url = f"sqlite:///{test_dir / 'orders.db'}"
    else:
        db_url = request.getfixturevalue("pg_cluster").create_database(f"django_asgi_{next(_numbers)}")
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
            with UvicornProcess(ASGI_APP, env) as server:
                yield AsgiProject(db_url, test_dir, server, shipped)
    finally:
        shipping.engine.dispose()


def post(client: httpx.Client, project: AsgiProject, view: str, message_id: str | None,
         body: bytes = b"{}") -> httpx.Response:
    headers = {"X-Message-ID": message_id} if message_id else {}
    return client.post(f"{project.url}/orders/{view}", content=body, headers=headers)


@pytest.mark.parametrize("view", VIEWS)
def test_a_retry_replays_byte_for_byte_and_reuse_is_422(project, view):
    message_id = f"r-{view}"
    with httpx.Client(timeout=30) as client:
        first = post(client, project, view, message_id)
        again = post(client, project, view, message_id)
        reused = post(client, project, view, message_id, body=b'{"other": 1}')
        fetched = client.get(f"{project.url}/chttp/messages/{message_id}")
    assert first.status_code == 201, first.text
    assert first.json() == {"ran": message_id}  # request.chttp in the view
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert [(k, v) for k, v in again.headers.items() if k not in ("date", "idempotent-replayed")] \
        == [(k, v) for k, v in first.headers.items() if k != "date"]
    assert reused.status_code == 422 and reused.json()["type"] == "message-id-reused"
    assert fetched.status_code == 201 and fetched.content == first.content
    assert project.runs(f"{view} {message_id}") == 1
    assert project.stored(message_id) == 1


@pytest.mark.parametrize("view", VIEWS)
def test_16_concurrent_deliveries_write_one_row_and_get_one_answer(project, view):
    message_id = f"dup-{view}"
    before = project.orders(view)
    barrier = threading.Barrier(16)

    def deliver(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait(30)
            return post(client, project, view, message_id)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(deliver, range(16)))
    assert {answer.status_code for answer in answers} == {201}, [a.text for a in answers]
    assert {answer.content for answer in answers} == {answers[0].content}
    assert sum("Idempotent-Replayed" not in answer.headers for answer in answers) == 1
    assert project.runs(f"{view} {message_id}") == 1
    assert project.orders(view) == before + 1
    assert project.stored(message_id) == 1


@pytest.mark.parametrize("view, item", [pytest.param("explode", "doomed", id="sync-view"),
                                        pytest.param("aexplode", "adoomed", id="async-view")])
def test_a_view_that_writes_then_raises_writes_nothing_and_the_retry_runs_again(project, view, item):
    message_id = f"x-{view}"
    with httpx.Client(timeout=30) as client:
        first = post(client, project, view, message_id)
        retry = post(client, project, view, message_id)
    assert first.status_code == retry.status_code == 500
    assert "Idempotent-Replayed" not in retry.headers
    assert project.runs(f"{view} {message_id}") == 2
    assert project.orders(item) == 0
    assert project.stored(message_id) == 0


def test_an_async_generators_writes_are_stored_with_its_streamed_answer(project):
    with httpx.Client(timeout=30) as client:
        first = post(client, project, "astream", "ast-1")
        again = post(client, project, "astream", "ast-1")
    assert first.status_code == 201, first.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert project.orders("astreamed") == 1
    assert first.json()["streamed"] == int(scalar(
        project.db_url, "SELECT id FROM orders_order WHERE item = 'astreamed'"))


@pytest.mark.parametrize("via", [pytest.param("", id="thread_sensitive-false"),
                                 pytest.param("?via=to_thread", id="asyncio-to_thread")])
def test_a_query_from_another_thread_is_refused_and_nothing_is_written(project, via):
    """``sync_to_async(thread_sensitive=False)`` or ``asyncio.to_thread`` would write on
    another connection, in autocommit, outside the message: refused, the view fails,
    nothing is stored."""
    message_id = "esc-to-thread" if via else "esc-default"
    before = project.orders("escaped")
    with httpx.Client(timeout=30) as client:
        first = post(client, project, f"aescape{via}", message_id)
        retry = post(client, project, f"aescape{via}", message_id)
        plain = post(client, project, f"aescape{via}", None)  # no message: nothing to protect
    assert first.status_code == retry.status_code == 500
    assert project.runs(f"aescape {message_id}") == 2
    assert project.stored(message_id) == 0
    assert plain.status_code == 201
    assert project.orders("escaped") == before + 1  # the request without an id only


def test_a_client_that_gives_up_mid_view_leaves_one_write(project):
    """Django cancels a request whose client went away; the view's thread still ends in
    one commit or one rollback, and the retry then gets the answer or runs once."""
    hold = project.test_dir / "hold"
    reached = project.test_dir / "reached"
    hold.touch()
    try:
        with httpx.Client(timeout=30) as client:
            with pytest.raises(httpx.TimeoutException):
                client.post(f"{project.url}/orders/held", content=b"",
                            headers={"X-Message-ID": "gone-1"}, timeout=httpx.Timeout(30, read=1))
            wait_for(reached.exists, what="the view to hold after its write")
    finally:
        hold.unlink()
    with httpx.Client(timeout=30) as client:
        retry = client.post(f"{project.url}/orders/held", content=b"",
                            headers={"X-Message-ID": "gone-1"})
        again = client.post(f"{project.url}/orders/held", content=b"",
                            headers={"X-Message-ID": "gone-1"})
    reached.unlink()
    assert retry.status_code == 201, retry.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert project.orders("held") == 1
    assert project.stored("gone-1") == 1


def test_an_async_views_certified_send_happens_once(project):
    with httpx.Client(timeout=30) as client:
        created = client.post(f"{project.url}/orders", json={"item": "ashipped"},
                              headers={"X-Message-ID": "as-order"})
        order_id = created.json()["id"]
        first = client.post(f"{project.url}/orders/{order_id}/aship",
                            headers={"X-Message-ID": "as-ship"})
        again = client.post(f"{project.url}/orders/{order_id}/aship",
                            headers={"X-Message-ID": "as-ship"})
    assert first.status_code == 200, first.text
    tracking = first.json()["tracking"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert len(project.shipped) == 1
    assert scalar(project.db_url, "SELECT tracking FROM orders_order WHERE id = :id",
                  id=order_id) == tracking


def test_requests_without_an_id_are_unchanged(project):
    with httpx.Client(timeout=30) as client:
        created = client.post(f"{project.url}/orders", json={"item": "plain-asgi"})
        again = client.post(f"{project.url}/orders", json={"item": "plain-asgi"})
        counted = post(client, project, "acounted", None)
    assert created.status_code == again.status_code == 201
    assert "X-Message-URL" not in created.headers
    assert created.json()["id"] != again.json()["id"]
    assert project.orders("plain-asgi") == 2
    assert counted.json() == {"ran": None}


def test_the_refusal_is_a_typed_error_that_pickles_with_its_alias():
    import pickle

    from chttp_server.errors import ChttpServerError, StatementOutsideMessage

    error = pickle.loads(pickle.dumps(StatementOutsideMessage("orders")))
    assert isinstance(error, ChttpServerError) and isinstance(error, RuntimeError)
    assert error.alias == "orders"
    assert "sync_to_async(thread_sensitive=True)" in str(error)
