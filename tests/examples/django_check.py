"""Django scenarios that need settings of their own, run in a subprocess (prints JSON).

``python -m tests.examples.django_check refusals DIR``: for each broken configuration,
the error Django's WSGI application raises when it is created (``None`` if it starts).

``python -m tests.examples.django_check scope DIR``: two logged-in users and an anonymous
client send the same message id through Django's test client; their answers.

``python -m tests.examples.django_check policies DIR``: messages on another alias, the
``REQUIRE_ID`` and ``MESSAGE_PREFIX`` settings, and ``Idempotency-Key``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

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
        "migrated": {},
        "authentication after, own scope": {
            "MIDDLEWARE": auth_after,
            "CHTTP": {"SCOPE": "tests.examples.django_check.header_scope"}},
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
    from django.db import transaction
    from django.test import Client

    from chttp_examples.django_orders.orders.models import Order

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


if __name__ == "__main__":
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    _configure(directory, scenario)
    scenarios = {"refusals": refusals, "scope": scope, "policies": policies}
    print(json.dumps(scenarios[scenario](directory)))
