"""The benchmarked application as a Django project: ``django-bare`` and ``django-certified``.

The same ``POST /items`` as :mod:`bench.app` (one row into ``bench_items``) written as a
Django view on Django's own connection, and ``GET /pid``. The two modes differ only by
``"chttp_server.django.CertifiedMiddleware"`` in ``MIDDLEWARE``, so the rows measure what
the Django integration costs next to the raw WSGI middleware's rows. Persistent
connections (``CONN_MAX_AGE``) in both modes, as a production Django project has them;
no authentication middleware, so every request is in the anonymous scope, like the
WSGI rows. The chttp tables are the bench database's own (made by the bench), so no
``migrate`` runs here.

Gunicorn loads ``bench.django_app:application``; ``BENCH_MODE`` and ``BENCH_DB_URL``
come from the environment, and Django is configured in the worker on the first request.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from sqlalchemy.engine import make_url

from bench.app import BuiltOnFirstCall

__all__ = ["application", "MODES", "settings_for"]

MODES = ("django-bare", "django-certified")


def settings_for(mode: str, db_url: str) -> dict[str, Any]:
    """The Django settings of ``mode`` on ``db_url`` (also bench/django_profile.py's)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    url = make_url(db_url)
    database = {
        "ENGINE": "django.db.backends.postgresql", "NAME": url.database or "",
        "USER": url.username or "", "PASSWORD": url.password or "",
        "HOST": url.host or "", "PORT": str(url.port or ""), "CONN_MAX_AGE": 600,
    }
    middleware = ["chttp_server.django.CertifiedMiddleware"] if mode == "django-certified" else []
    return {
        "SECRET_KEY": "bench", "DEBUG": False, "ALLOWED_HOSTS": ["*"], "USE_TZ": True,
        "ROOT_URLCONF": __name__, "INSTALLED_APPS": ["chttp_server.django"],
        "MIDDLEWARE": middleware, "DATABASES": {"default": database},
        # Direct connections to PostgreSQL, as bench/app.py's certified row.
        "CHTTP": {"PREPARED_STATEMENTS": True},
    }


def items(request: Any) -> Any:
    from django.db import connection
    from django.http import HttpResponse

    message = getattr(request, "chttp", None)
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO bench_items (message_id, payload) VALUES (%s, %s)",
                       [message.message_id if message else None, request.body.decode() or "{}"])
    return HttpResponse(b'{"ok": true}', status=201, content_type="application/json")


def items_atomic(request: Any) -> Any:
    """``POST /items-atomic``: the bare view in a transaction, as ``ATOMIC_REQUESTS`` runs
    it (BEGIN, INSERT, COMMIT); bench/django_profile.py's ``atomic`` mode measures what a
    transaction of its own costs a Django request, certified or not."""
    from django.db import transaction

    with transaction.atomic():
        return items(request)


def pid(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse(str(os.getpid()).encode(), content_type="text/plain")


def _urlpatterns() -> list[Any]:
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    return [path("items", csrf_exempt(items)), path("items-atomic", csrf_exempt(items_atomic)),
            path("pid", pid)]


def __getattr__(name: str) -> Any:
    # ROOT_URLCONF is this module; its patterns are built once Django is configured.
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


def _from_environment() -> Callable[..., Iterable[bytes]]:
    import django
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    settings.configure(**settings_for(os.environ.get("BENCH_MODE", "django-bare"),
                                   os.environ["BENCH_DB_URL"]))
    django.setup()
    return get_wsgi_application()


#: Gunicorn's entry point; configures Django on first call (after the worker forks).
application = BuiltOnFirstCall(_from_environment)
