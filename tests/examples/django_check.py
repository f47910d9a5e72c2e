"""Django scenarios that need settings of their own, run in a subprocess (prints JSON).

``python -m tests.examples.django_check refusals DIR``: for each broken configuration,
the error Django's WSGI application raises when it is created (``None`` if it starts).

``python -m tests.examples.django_check scope DIR``: two logged-in users and an anonymous
client send the same message id through Django's test client; their answers.

``python -m tests.examples.django_check policies DIR``: messages on another alias, the
``REQUIRE_ID`` and ``MESSAGE_PREFIX`` settings, and ``Idempotency-Key``.

``python -m tests.examples.django_check wrappers DIR``: the guard of
chttp_server/django/threads.py and a project's own ``connection.execute_wrapper`` block
around the statement that opens a thread's connection.

``python -m tests.examples.django_check connection DIR``: on the PostgreSQL database of
``$CHTTP_ORDERS_DB``, with persistent connections and ``PREPARED_STATEMENTS``: how long
the store's pool record of Django's connection lives, and requests across a reconnect.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import django
from django.conf import settings


def _configure(directory: Path, scenario: str) -> None:
    from tests.examples import django_test_settings as base

    names = {name: getattr(base, name) for name in dir(base) if name.isupper()}
    names["DATABASES"] = {"default": {"ENGINE": "django.db.backends.sqlite3",
                                      "NAME": str(directory / "check.db")}}
    if scenario == "policies":  # messages on an alias of their own
        names["DATABASES"]["messages"] = {"ENGINE": "django.db.backends.sqlite3",
                                          "NAME": str(directory / "messages.db")}
        names["CHTTP"] = {"DATABASE": "messages"}
    if scenario == "connection":  # PostgreSQL, persistent connections, prepared statements
        database = base.database_from_url(os.environ["CHTTP_ORDERS_DB"])
        names["DATABASES"] = {"default": {**database, "CONN_MAX_AGE": 600}}
        names["CHTTP"] = {"PREPARED_STATEMENTS": True}
    settings.configure(**names)
    django.setup()


def refusals(directory: Path) -> dict[str, Any]:
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.management import call_command
    from django.test.utils import override_settings

    from chttp_server import ConfigurationError

    ours = "chttp_server.django.CertifiedMiddleware"
    auth = "django.contrib.auth.middleware.AuthenticationMiddleware"
    base_middleware = list(settings.MIDDLEWARE)
    auth_after = [entry for entry in base_middleware if entry != auth] + [auth]
    cases: dict[str, dict[str, Any]] = {
        "not migrated": {},
        "app not installed": {"INSTALLED_APPS": [app for app in settings.INSTALLED_APPS
                                                 if app != "chttp_server.django"]},
        "unknown alias": {"CHTTP": {"DATABASE": "orders"}},
        "mysql": {"DATABASES": {"default": {"ENGINE": "django.db.backends.mysql", "NAME": "x"}}},
        "autocommit off": {"DATABASES": {"default": {**settings.DATABASES["default"],
                                                     "AUTOCOMMIT": False}}},
        "serializable": {"DATABASES": {"default": {
            "ENGINE": "django.db.backends.postgresql", "NAME": "x",
            "OPTIONS": {"isolation_level": 3}}}},
        "authentication after": {"MIDDLEWARE": auth_after},
        "listed twice": {"MIDDLEWARE": [*base_middleware, ours]},
        "unknown key": {"CHTTP": {"RETENTON": 60}},
        "bad retention": {"CHTTP": {"RETENTION": -1}},
        "bad prepared statements": {"CHTTP": {"PREPARED_STATEMENTS": "yes"}},
        "migrated": {},
        "authentication after, own scope": {
            "MIDDLEWARE": auth_after,
            "CHTTP": {"SCOPE": "tests.examples.django_check.header_scope"}},
        "misspelt journal URL": {"CHTTP": {"JOURNAL": "sqllite:///journal.db"}},
        "journal in a missing directory": {
            "CHTTP": {"JOURNAL": f"sqlite:///{directory / 'nowhere' / 'journal.db'}"}},
    }
    answers: dict[str, Any] = {}
    for name, changes in cases.items():
        if name == "migrated":
            call_command("migrate", verbosity=0)
        with override_settings(**changes):
            try:
                WSGIHandler()
            except ConfigurationError as exc:
                answers[name] = str(exc)
            else:
                answers[name] = None
    return answers


def header_scope(request: Any) -> str:
    return str(request.headers.get("X-Tenant", ""))


def scope(directory: Path) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    clients = {"alice": Client(), "bob": Client(), "anonymous": Client()}
    clients["alice"].force_login(alice)
    clients["bob"].force_login(bob)
    answers: dict[str, Any] = {}
    for who in ("alice", "bob", "anonymous", "alice"):
        response = clients[who].post("/orders/counted", b"", content_type="application/json",
                                     headers={"X-Message-ID": "same-id"})
        answers.setdefault(who, []).append({
            "status": response.status_code,
            "replayed": response.headers.get("Idempotent-Replayed"),
        })
    answers["users"] = {"alice": alice.pk, "bob": bob.pk}
    answers["inside a transaction"] = _inside_a_transaction()
    return answers


def _inside_a_transaction() -> dict[str, Any]:
    """Django's ``TestCase`` runs requests inside its own transaction: messages nest."""
    from chttp_examples.django_orders.orders.models import Order
    from django.db import transaction
    from django.test import Client

    client = Client(raise_request_exception=False)
    answers: dict[str, Any] = {}
    with transaction.atomic():
        first = client.post("/orders/counted", b"", content_type="application/json",
                            headers={"X-Message-ID": "nested-1"})
        again = client.post("/orders/counted", b"", content_type="application/json",
                            headers={"X-Message-ID": "nested-1"})
        exploded = client.post("/orders/explode", b"", content_type="application/json",
                               headers={"X-Message-ID": "nested-2"})
        answers["statuses"] = [first.status_code, again.status_code, exploded.status_code]
        answers["replayed"] = again.headers.get("Idempotent-Replayed")
        answers["doomed"] = Order.objects.filter(item="doomed").count()
        answers["usable"] = Order.objects.count() > 0  # the outer transaction goes on
        transaction.set_rollback(True)
    return answers


def policies(directory: Path) -> dict[str, Any]:
    """CHTTP["DATABASE"], REQUIRE_ID and MESSAGE_PREFIX, and the Idempotency-Key header."""
    import sqlite3

    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import override_settings

    call_command("migrate", verbosity=0)
    call_command("migrate", database="messages", verbosity=0)

    def tables(name: str) -> list[str]:
        with sqlite3.connect(directory / name) as connection:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                      "AND name LIKE 'chttp_%'").fetchall()
        return sorted(row[0] for row in rows)

    answers: dict[str, Any] = {"default tables": tables("check.db"),
                               "messages tables": tables("messages.db")}
    policy = {"DATABASE": "messages", "REQUIRE_ID": ["POST"], "MESSAGE_PREFIX": "/m/"}
    with override_settings(CHTTP=policy):
        client = Client()
        missing = client.post("/orders/counted", b"", content_type="application/json")
        keyed = client.post("/orders/counted", b"", content_type="application/json",
                            headers={"Idempotency-Key": '"k-1"'})
        listed = client.get("/orders")
        replayed = client.get("/m/k-1")
    answers["missing"] = [missing.status_code, missing.json()["type"]]
    answers["keyed"] = [keyed.status_code, keyed.json(), keyed.headers.get("X-Message-URL")]
    answers["listed"] = listed.status_code
    answers["replayed"] = [replayed.status_code, replayed.headers.get("Idempotent-Replayed")]
    with sqlite3.connect(directory / "messages.db") as connection:
        answers["stored"] = connection.execute(
            "SELECT message_id FROM chttp_messages").fetchall()
    return answers


def connection(directory: Path) -> dict[str, Any]:
    from chttp_examples.django_orders.orders.models import Order
    from django.core.management import call_command
    from django.db import connection as django_connection
    from django.test import Client

    from chttp_server import store_dbapi
    from chttp_server.django.connection import django_engine

    call_command("migrate", verbosity=0)
    engine = django_engine("default")
    # Prepared only through psycopg2 (store_dbapi), and only on a pool it accepts.
    answers: dict[str, Any] = {
        "prepares": store_dbapi.supports(engine) and store_dbapi.prepares(engine)}
    with engine.connect() as first:
        first.connection.info["marked"] = True
    with engine.connect() as again:
        answers["record kept"] = again.connection.info.get("marked")
    django_connection.close()
    with engine.connect() as reopened:
        answers["record after close"] = reopened.connection.info.get("marked")

    client = Client()

    def post(message_id: str) -> list[Any]:
        response = client.post("/orders/counted", b"", content_type="application/json",
                               headers={"X-Message-ID": message_id})
        return [response.status_code, response.headers.get("Idempotent-Replayed")]

    answers["answers"] = [post(message_id) for message_id in ("c-1", "c-2", "c-1", "c-3")]
    # Another client is another handler with a middleware of its own, on the same
    # connection: it must know what the first one prepared there.
    answers["another client"] = Client().post(
        "/orders/counted", b"", content_type="application/json",
        headers={"X-Message-ID": "c-5"}).status_code

    def prepared() -> list[str]:
        with django_connection.cursor() as cursor:
            cursor.execute("SELECT name FROM pg_prepared_statements ORDER BY name")
            return [row[0] for row in cursor.fetchall()]

    answers["prepared"] = prepared()
    django_connection.close()  # a new session: whatever was prepared is gone with the old
    answers["after reconnect"] = [post(message_id) for message_id in ("c-4", "c-4", "c-2")]
    answers["prepared after reconnect"] = prepared()
    answers["lost elsewhere"] = _lost_in_another_thread(post)
    answers["orders"] = Order.objects.filter(item="counted").count()
    answers["commit"] = _commit_with_the_response(post)
    return answers


def _commit_with_the_response(post: Callable[[str], list[Any]]) -> dict[str, Any]:
    """On psycopg 3 the outermost block's COMMIT travels with the stored response
    (chttp_server.store_dbapi): Django's commit then sends nothing (no "there is no
    transaction in progress" from the server), its ``on_commit`` hooks run once, and a
    message nested in the caller's transaction is not committed with its response."""
    from django.db import connection as django_connection
    from django.db import transaction

    from chttp_examples.django_orders.orders.models import Order

    hooks: list[str] = []

    def hook_on_insert(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("INSERT"):
            transaction.on_commit(lambda: hooks.append("committed"))
        return execute(sql, params, many, context)

    def messages(message_id: str) -> int:
        with django_connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM chttp_messages WHERE message_id = %s",
                           [message_id])
            return int(cursor.fetchone()[0])

    django_connection.ensure_connection()
    notices: list[str] = []
    if hasattr(django_connection.connection, "add_notice_handler"):  # psycopg 3
        django_connection.connection.add_notice_handler(
            lambda diagnostic: notices.append(str(diagnostic.message_primary)))
    with django_connection.execute_wrapper(hook_on_insert):
        answers: dict[str, Any] = {"outermost": post("o-1")}
    answers["hooks"] = list(hooks)
    answers["stored"] = messages("o-1")
    before = Order.objects.count()
    with transaction.atomic():
        answers["nested"] = post("o-2")
        transaction.set_rollback(True)
    answers["nested stored"] = messages("o-2")
    answers["nested orders"] = Order.objects.count() - before
    answers["notices"] = notices
    return answers


def _lost_in_another_thread(post: Callable[[str], list[Any]]) -> dict[str, Any]:
    """The server ends this thread's session; a healthy thread's connection goes on.

    The thread's next message is 503 ``store-unavailable`` (nothing ran), the one after
    it runs on a new connection; the other thread's connection, and what its record
    knows, is not touched by the failure.
    """
    from django.db import connection as django_connection

    other = ThreadPoolExecutor(max_workers=1)  # one thread: one Django connection
    try:
        answers: dict[str, Any] = {"other before": other.submit(post, "t-1").result()}
        assert post("t-2")[0] == 201
        with django_connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        # psycopg2 or psycopg 3, whichever Django chose.
        killer = django_connection.get_new_connection(django_connection.get_connection_params())
        killer.autocommit = True
        with killer.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        killer.close()
        answers["here"] = [post("t-3")[0], post("t-3")]
        answers["other after"] = other.submit(post, "t-4").result()
        other.submit(lambda: django_connection.close()).result()  # that thread's own
    finally:
        other.shutdown()
    return answers


def wrappers(directory: Path) -> dict[str, Any]:
    """A project's ``execute_wrapper`` block in which a thread's connection opens.

    The connection gets the foreign-thread guard when Django opens it, inside the
    block; leaving the block pops the last wrapper, which must be the project's, so the
    guard stays and the project's wrapper goes.
    """
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.management import call_command
    from django.db import connection as django_connection

    call_command("migrate", verbosity=0)
    WSGIHandler()  # loads the middleware, which installs the guard

    seen: list[str] = []

    def project_wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    def in_a_new_thread() -> dict[str, Any]:
        assert django_connection.connection is None
        with django_connection.execute_wrapper(project_wrapper):
            with django_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        names = [wrapper.__name__ for wrapper in django_connection.execute_wrappers]
        django_connection.close()
        return {"wrappers after": names, "seen": len(seen)}

    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(in_a_new_thread).result()


if __name__ == "__main__":
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    _configure(directory, scenario)
    scenarios = {"refusals": refusals, "scope": scope, "policies": policies,
                 "connection": connection, "wrappers": wrappers}
    print(json.dumps(scenarios[scenario](directory)))
