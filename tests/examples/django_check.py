"""Django scenarios that need settings of their own, run in a subprocess (prints JSON).

``python -m tests.examples.django_check refusals DIR``: for each broken configuration,
the error Django's WSGI application raises when it is created (``None`` if it starts).

``python -m tests.examples.django_check scope DIR``: two logged-in users and an anonymous
client send the same message id through Django's test client; their answers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import django
from django.conf import settings


def _configure(directory: Path) -> None:
    from tests.examples import django_test_settings as base

    names = {name: getattr(base, name) for name in dir(base) if name.isupper()}
    names["DATABASES"] = {"default": {"ENGINE": "django.db.backends.sqlite3",
                                      "NAME": str(directory / "check.db")}}
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
    return answers


if __name__ == "__main__":
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    _configure(directory)
    print(json.dumps({"refusals": refusals, "scope": scope}[scenario](directory)))
