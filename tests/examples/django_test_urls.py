"""The order service's URLs plus views the Django tests need.

Each test view appends a line to ``$CHTTP_TEST_DIR/runs`` when it runs: a rollback
cannot undo that, so the tests can count runs across the server process.

* ``POST /orders/counted`` — writes an order, answers 201 with ``request.chttp``'s id;
* ``POST /orders/explode`` — writes an order, then raises (Django answers 500);
* ``POST /orders/busy`` — writes an order, then answers 429 (try again later);
* ``POST /orders/severed`` — writes an order, then loses its PostgreSQL connection;
* ``POST /orders/commits?item=…&then=raise|return|write`` — writes an order, sends
  ``COMMIT`` through Django's cursor, then raises, answers 201, or writes an order
  ``<item>-after`` and answers 201 (a view that ends the message's transaction itself);
* ``POST /orders/cookie`` — answers with two cookies and a header of its own;
* ``POST /orders/stream`` — a streaming answer whose generator writes an order;
* ``POST /orders/held`` — writes an order; while ``$CHTTP_TEST_DIR/hold`` exists it
  drops ``reached`` and waits, so a test can SIGKILL the process before the commit.

Async views, for the project served under ASGI (tests/examples/test_django_asgi.py):

* ``POST /orders/acounted`` — ``await Order.objects.acreate(...)``, answers 201;
* ``POST /orders/aexplode`` — writes an order through the async ORM, then raises;
* ``POST /orders/aescape`` — writes an order from another thread
  (``sync_to_async(thread_sensitive=False)``, or ``asyncio.to_thread`` with
  ``?via=to_thread``), outside the message's transaction;
* ``POST /orders/astream`` — a streaming answer from an async generator that writes;
* ``POST /orders/<id>/aship`` — the ship view as an async view: its certified send
  through ``sync_to_async(request.chttp.post)``;
* ``GET /ping`` — 200, for the server's start-up probe.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

from chttp_examples.django_orders.orders.models import Order
from chttp_examples.django_orders.urls import urlpatterns as order_patterns
from django.conf import settings
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.http import require_POST

TEST_DIR = Path(os.environ.get("CHTTP_TEST_DIR", "."))


def _ran(name: str, request: HttpRequest) -> None:
    message = request.chttp
    with open(TEST_DIR / "runs", "a") as runs:
        runs.write(f"{name} {message.message_id if message else '-'}\n")


@require_POST
def counted(request: HttpRequest) -> HttpResponse:
    _ran("counted", request)
    Order.objects.create(item="counted", quantity=1)
    message = request.chttp
    return JsonResponse({"ran": message.message_id if message else None}, status=201)


@require_POST
def explode(request: HttpRequest) -> HttpResponse:
    _ran("explode", request)
    Order.objects.create(item="doomed", quantity=1)
    raise RuntimeError("the view failed after its write")


@require_POST
def busy(request: HttpRequest) -> HttpResponse:
    _ran("busy", request)
    Order.objects.create(item="busy", quantity=1)
    return JsonResponse({"error": "try later"}, status=429, headers={"Retry-After": "1"})


@require_POST
def severed(request: HttpRequest) -> HttpResponse:
    """Writes an order, then its PostgreSQL connection is terminated under it."""
    from django.db import connection

    _ran("severed", request)
    Order.objects.create(item="severed", quantity=1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    return JsonResponse({"severed": False}, status=201)


@require_POST
def commits(request: HttpRequest) -> HttpResponse:
    """Writes an order, then ends the transaction with SQL of its own."""
    from django.db import connection

    _ran("commits", request)
    Order.objects.create(item=request.GET.get("item", "committed"), quantity=1)
    with connection.cursor() as cursor:
        cursor.execute("COMMIT")
    if request.GET.get("then") == "raise":
        raise RuntimeError("the view failed after its own COMMIT")
    if request.GET.get("then") == "write":  # refused, unsent, where psycopg is in autocommit
        Order.objects.create(item=request.GET.get("item", "committed") + "-after", quantity=1)
    return JsonResponse({"committed": True}, status=201)


@require_POST
def held(request: HttpRequest) -> HttpResponse:
    Order.objects.create(item="held", quantity=1)
    hold = TEST_DIR / "hold"
    if hold.exists():
        (TEST_DIR / "reached.tmp").write_text("x")
        (TEST_DIR / "reached.tmp").replace(TEST_DIR / "reached")
        while hold.exists():
            time.sleep(0.05)
    return JsonResponse({"held": True}, status=201)


def cookie(request: HttpRequest) -> HttpResponse:
    """Answers with a cookie and a header of its own, to be replayed as they were."""
    response = JsonResponse({"cookie": "set"}, status=201)
    response.set_cookie("basket", "b-1", max_age=3600, httponly=True, samesite="Strict")
    response.set_cookie("theme", "dark")
    response["X-Order-Count"] = "7"
    return response


@require_POST
def stream(request: HttpRequest) -> HttpResponse:
    """A streaming answer whose generator writes an order while it streams."""
    def chunks() -> Iterator[bytes]:
        yield b'{"streamed": '
        order = Order.objects.create(item="streamed", quantity=1)
        yield str(order.id).encode() + b"}"

    return StreamingHttpResponse(chunks(), status=201, content_type="application/json")


async def _aran(name: str, request: HttpRequest) -> None:
    await sync_to_async(_ran, thread_sensitive=False)(name, request)


@require_POST
async def acounted(request: HttpRequest) -> HttpResponse:
    await _aran("acounted", request)
    await Order.objects.acreate(item="acounted", quantity=1)
    message = request.chttp
    return JsonResponse({"ran": message.message_id if message else None}, status=201)


@require_POST
async def aexplode(request: HttpRequest) -> HttpResponse:
    await _aran("aexplode", request)
    await Order.objects.acreate(item="adoomed", quantity=1)
    raise RuntimeError("the async view failed after its write")


@require_POST
async def aescape(request: HttpRequest) -> HttpResponse:
    """Writes from a thread of its own: Django gives that thread another connection."""
    await _aran("aescape", request)
    if request.GET.get("via") == "to_thread":
        await asyncio.to_thread(Order.objects.create, item="escaped", quantity=1)
    else:
        await sync_to_async(Order.objects.create, thread_sensitive=False)(item="escaped",
                                                                          quantity=1)
    return JsonResponse({"escaped": True}, status=201)


@require_POST
async def astream(request: HttpRequest) -> HttpResponse:
    """A streaming answer from an async generator that writes an order while it streams."""
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"streamed": '
        order = await Order.objects.acreate(item="astreamed", quantity=1)
        yield str(order.id).encode() + b"}"

    return StreamingHttpResponse(chunks(), status=201, content_type="application/json")


@require_POST
async def aship(request: HttpRequest, order_id: int) -> HttpResponse:
    order = await Order.objects.aget(pk=order_id)
    message = request.chttp
    if message is None:
        return JsonResponse({"error": "shipping needs an X-Message-ID"}, status=400)
    # The sender's calls are synchronous: sync_to_async runs them in the request's
    # thread, off the event loop.
    shipment = await sync_to_async(message.post)(f"{settings.SHIPPING_URL}/shipments",
                                                 json={"order": order.id, "item": order.item})
    shipment.raise_for_status()
    order.tracking = shipment.json()["tracking"]
    await order.asave(update_fields=["tracking"])
    return JsonResponse(order.as_json())


def ping(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"pong")


urlpatterns = [
    path("ping", ping),
    path("orders/acounted", acounted),
    path("orders/aexplode", aexplode),
    path("orders/aescape", aescape),
    path("orders/astream", astream),
    path("orders/<int:order_id>/aship", aship),
    path("orders/stream", stream),
    path("orders/cookie", cookie),
    path("orders/counted", counted),
    path("orders/explode", explode),
    path("orders/held", held),
    path("orders/busy", busy),
    path("orders/severed", severed),
    path("orders/commits", commits),
    *order_patterns,
]
