"""Is this WSGI application already certified? What ``chttp-server serve`` asks first.

``serve`` wraps the application it loads in :class:`CertifiedMiddleware`. An
application that already carries one — a ``CertifiedMiddleware`` itself, a Flask app
set up with :class:`chttp_server.flask.Certified`, a Django project whose ``MIDDLEWARE``
holds ``chttp_server.django.CertifiedMiddleware`` — must not get a second: the middleware
refuses to be stacked (two claims of one message in two transactions could not give
exactly-once), and it finds out only on the first certified request, answering 500 to
every one of them (issue 25). :func:`certification_of` looks before serving, so
``serve`` serves such an application as it is, with its own store, and says so.

The search follows the attributes WSGI wrappers keep their application in (``app``,
``application``, ``wsgi_app``, Werkzeug's ``ProxyFix`` and the like), a few levels deep;
a wrapper that hides its application elsewhere is not seen, and the middleware's own
refusal remains the last line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

__all__ = ["Certification", "certification_of"]

#: Attributes in which WSGI wrappers keep the application they wrap.
_INNER = ("wsgi_app", "app", "application")
#: chttp_server.django.checks.MIDDLEWARE_PATH (not imported: the receiver's core never
#: imports a front end; tests/test_layers.py).
_DJANGO_MIDDLEWARE = "chttp_server.django.CertifiedMiddleware"
#: How many wrappers deep to look.
_DEPTH = 6


@dataclass(frozen=True)
class Certification:
    """How an application is already certified, and where its messages are stored."""

    #: ``CertifiedMiddleware``, ``Flask Certified`` or ``Django CertifiedMiddleware``.
    kind: str
    #: The store's engine, when one is known before the first request (not for Django).
    engine: Engine | None = None
    #: Where the messages are stored, as it is safe to print.
    where: str = ""


def certification_of(app: Any) -> Certification | None:
    """How ``app`` (or an application it wraps) is already certified; ``None`` if not."""
    from chttp_server.middleware import CertifiedMiddleware

    seen: set[int] = set()
    current = app
    for _ in range(_DEPTH):
        if current is None or id(current) in seen:
            return None
        seen.add(id(current))
        if isinstance(current, CertifiedMiddleware):
            return _found("CertifiedMiddleware", current.engine)
        flask = _flask_middleware(current)
        if flask is not None:
            return _found("Flask Certified", flask.engine)
        django = _django_certification(current)
        if django is not None:
            return django
        current = next((getattr(current, name) for name in _INNER
                        if _has_attribute(current, name)), None)
    return None


def _has_attribute(obj: Any, name: str) -> bool:
    try:
        return callable(getattr(obj, name, None))
    except Exception:  # pragma: no cover - a property that raises is not a wrapped app
        return False


def _found(kind: str, engine: Engine) -> Certification:
    return Certification(kind, engine, engine.url.render_as_string(hide_password=True))


def _flask_middleware(app: Any) -> Any:
    """The ``CertifiedMiddleware`` a Flask app's ``Certified`` extension installed."""
    from chttp_server.middleware import CertifiedMiddleware

    extensions = getattr(app, "extensions", None)
    if not isinstance(extensions, dict):
        return None
    middleware = extensions.get("chttp")
    return middleware if isinstance(middleware, CertifiedMiddleware) else None


def _django_certification(app: Any) -> Certification | None:
    """A Django WSGI handler whose settings put chttp's middleware in ``MIDDLEWARE``."""
    if "django" not in sys.modules:
        return None   # never import Django for an application that does not use it
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    if not isinstance(app, WSGIHandler):
        return None
    if _DJANGO_MIDDLEWARE not in list(getattr(settings, "MIDDLEWARE", [])):
        return None
    alias = getattr(settings, "CHTTP", {}).get("DATABASE", "default")
    name = settings.DATABASES.get(alias, {}).get("NAME", "?")
    return Certification("Django CertifiedMiddleware", None,
                         f"Django's database {alias!r} ({name})")
