"""Django integration: exactly-once views over the project's own ORM connection.

In ``settings.py``, and nothing else is required::

    INSTALLED_APPS = [..., "chttp_server.django"]
    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "chttp_server.django.CertifiedMiddleware",   # after authentication: scope = user
        ...,
    ]
    CHTTP = {"RETENTION": timedelta(days=15)}        # optional (chttp_server.django.conf)

then ``python manage.py migrate`` creates the message store's tables in the database
named by ``CHTTP["DATABASE"]`` (``"default"``). Every request carrying ``X-Message-ID``
or ``Idempotency-Key`` then runs its view once: the view's ORM writes commit with the
stored response, in one transaction on Django's own connection, and a retry gets the
stored answer byte for byte (docs/protocol.rst §2). Views reach the message as
``request.chttp`` (``None`` for a request without an id): its ``message_id``, ``scope``,
``persist()`` and ``post()``/``get()``/… for certified sends of their own.
``python manage.py chttp_purge`` deletes messages past their retention.

Modules: :mod:`~chttp_server.django.middleware` (the middleware),
:mod:`~chttp_server.django.conf` (the ``CHTTP`` setting),
:mod:`~chttp_server.django.checks` (start-up refusals),
:mod:`~chttp_server.django.connection` (SQLAlchemy over Django's connection),
:mod:`~chttp_server.django.responses` (stored and replayed responses),
:mod:`~chttp_server.django.journal` (the journal of views' sends),
:mod:`~chttp_server.django.threads` (under ASGI: queries from other threads refused).

Under ASGI (``get_asgi_application()``) sync and async views are exactly-once the same
way: Django runs the middleware, sync views and async views' ORM calls in the
request's one thread (:mod:`~chttp_server.django.threads`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CertifiedMiddleware"]


def __getattr__(name: str) -> Any:
    # Lazy: Django imports this package while it loads INSTALLED_APPS, before the app
    # registry is ready; the middleware module is imported when MIDDLEWARE is loaded.
    if name == "CertifiedMiddleware":
        from chttp_server.django.middleware import CertifiedMiddleware

        return CertifiedMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
