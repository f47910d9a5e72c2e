"""What a certified Django request sends to PostgreSQL, and the connection Django gets back.

``python -m tests.examples.django_round_trips DIR`` (prints JSON), on the database of
``$CHTTP_ORDERS_DB`` with persistent connections; ``CHTTP_CHECK_DRIVER=psycopg2`` hides
psycopg 3 so Django picks psycopg2, ``CHTTP_CHECK_PREPARED=1`` turns on the store's
``PREPARED_STATEMENTS``. Run in a subprocess: Django's settings are global to a process.

On psycopg 3 every request is traced by libpq itself (``PQtrace``): each ``Query``
message (the simple protocol: one query string, however many statements it holds) and
each ``Sync`` (the extended protocol) the client sends is one round trip, and its text
is recorded. psycopg2 has no such trace; there the statements are ``None`` and only the
outcomes and the connection's state are reported.

After each request the state Django and the driver are left in is recorded (Django's
``get_autocommit()``, ``in_atomic_block``, ``needs_rollback``; the driver's
``autocommit``, cursor class and the server's transaction status): the fused
transaction (chttp_server.fused_transaction.lend) must give the connection back exactly
as Django expects it, on every path.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

if os.environ.get("CHTTP_CHECK_DRIVER") == "psycopg2":
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # Django falls back to psycopg2

import django
from django.conf import settings


def _configure() -> None:
    from tests.examples import django_test_settings as base

    names = {name: getattr(base, name) for name in dir(base) if name.isupper()}
    database = base.database_from_url(os.environ["CHTTP_ORDERS_DB"])
    names["DATABASES"] = {"default": {**database, "CONN_MAX_AGE": 600}}
    names["CHTTP"] = {"PREPARED_STATEMENTS": os.environ.get("CHTTP_CHECK_PREPARED") == "1"}
    settings.configure(**names)
    django.setup()


def _round_trips(trace: str) -> list[str]:
    """The round trips in a libpq trace: the text of each ``Query``, or of the last
    ``Parse`` before each ``Sync``."""
    trips: list[str] = []
    parsed = ""
    for line in trace.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[0] != "F":
            continue
        if fields[2] == "Query":
            trips.append(_quoted(fields[3]))
        elif fields[2] == "Parse":
            parsed = _quoted(fields[3].split('"', 2)[2]) if fields[3].count('"') >= 4 else parsed
        elif fields[2] == "Sync":
            trips.append(parsed)
    return trips


def _quoted(field: str) -> str:
    field = field.strip()
    return field[1:field.rindex('"')] if field.startswith('"') else field


def _traced(action: Callable[[], Any]) -> tuple[Any, list[str] | None]:
    """``action()``'s result and the round trips of Django's connection meanwhile."""
    from django.db import connection

    connection.ensure_connection()
    raw = connection.connection
    if not hasattr(raw, "pgconn"):  # psycopg2
        return action(), None
    from psycopg import pq

    with tempfile.TemporaryFile("w+") as trace:
        raw.pgconn.trace(trace.fileno())
        raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            result = action()
        finally:
            if not raw.closed:
                raw.pgconn.untrace()
        trace.seek(0)
        return result, _round_trips(trace.read())


def _state() -> dict[str, Any]:
    from django.db import connection

    raw = connection.connection
    status = (raw.pgconn.transaction_status if hasattr(raw, "pgconn")
              else raw.get_transaction_status())
    factory = raw.cursor_factory
    return {"django autocommit": connection.get_autocommit(),
            "in atomic block": connection.in_atomic_block,
            "needs rollback": connection.needs_rollback,
            "driver autocommit": raw.autocommit,
            "cursor class": factory.__name__ if factory is not None else None,
            "server idle": int(status) == 0}


def run(directory: Path) -> dict[str, Any]:
    from chttp_examples.django_orders.orders.models import Order
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.test import Client

    call_command("migrate", verbosity=0)
    client = Client(raise_request_exception=False)

    def post(path: str, message_id: str) -> dict[str, Any]:
        response, trips = _traced(lambda: client.post(
            path, b"{}", content_type="application/json", headers={"X-Message-ID": message_id}))
        return {"status": response.status_code,
                "replayed": response.headers.get("Idempotent-Replayed"),
                "round trips": trips, "state": _state()}

    connection.ensure_connection()
    answers: dict[str, Any] = {
        "driver": type(connection.connection).__module__.split(".")[0],
        "state before": _state(),
    }
    post("/orders/counted", "warm-1")  # prepares the statements on this session
    answers["certified"] = post("/orders/counted", "f-1")
    answers["replay"] = post("/orders/counted", "f-1")
    with transaction.atomic():  # the caller's transaction (Django's TestCase): today's path
        answers["nested"] = post("/orders/counted", "f-2")
        transaction.set_rollback(True)
    answers["nested state after the caller's rollback"] = _state()
    answers["explode"] = post("/orders/explode", "f-3")
    answers["explode retried"] = post("/orders/explode", "f-3")["status"]
    answers["busy"] = post("/orders/busy", "f-4")
    answers["commits then writes"] = post("/orders/commits?item=cw&then=write", "f-5")
    answers["commits then writes retried"] = post("/orders/commits?item=cw&then=write",
                                                  "f-5")["status"]
    answers["after"] = post("/orders/counted", "f-6")
    answers["orders"] = {item: Order.objects.filter(item=item).count()
                         for item in ("counted", "doomed", "busy", "cw", "cw-after")}
    return answers


if __name__ == "__main__":
    _configure()
    print(json.dumps(run(Path(sys.argv[1]))))
