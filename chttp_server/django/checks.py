"""Start-up checks: a project that cannot get the guarantee is refused, naming the fix.

(One check only warns, through Django's system checks: ``DATA_UPLOAD_MAX_MEMORY_SIZE``
below ``CHTTP['MAX_REQUEST_BYTES']``, :func:`check_upload_limit`; the middleware then
applies the smaller cap itself, :func:`request_body_limit`.)

docs/protocol.rst §2 holds only if the claim, the view's writes and the stored response
commit as one transaction on the database the store lives in, and only if every
principal's ids are kept apart (§1). Each check below guards one way a Django project
can silently lose that, and raises :class:`~chttp_server.ConfigurationError` when the
middleware is loaded (Django loads middleware when the WSGI application is created), so
the mistake is a failed start, never a hang or a 500 on the first certified request.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.utils.module_loading import import_string

from chttp_server.django.conf import SETTING_NAME, ChttpSettings
from chttp_server.django.connection import VENDORS
from chttp_server.errors import ConfigurationError

__all__ = ["check_configuration", "check_upload_limit", "request_body_limit",
           "upload_limit_problem", "APP_NAME", "MIDDLEWARE_PATH", "UPLOAD_LIMIT_WARNING"]

APP_NAME = "chttp_server.django"
MIDDLEWARE_PATH = "chttp_server.django.CertifiedMiddleware"

_AUTHENTICATION = (
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.RemoteUserMiddleware",
)


def check_configuration(conf: ChttpSettings, middleware_class: type) -> None:
    """Raise :class:`ConfigurationError` for the first problem found."""
    if not apps.is_installed(APP_NAME):
        raise ConfigurationError(
            f"add {APP_NAME!r} to INSTALLED_APPS: its migration creates the message "
            "store's tables (python manage.py migrate)"
        )
    _check_database(conf.database)
    _check_middleware_order(conf, middleware_class)


def _check_database(alias: str) -> None:
    databases = settings.DATABASES
    if alias not in databases:
        raise ConfigurationError(
            f"{SETTING_NAME}['DATABASE'] is {alias!r}, which is not in settings.DATABASES "
            f"(aliases: {sorted(databases)})"
        )
    database = databases[alias]
    engine = str(database.get("ENGINE", ""))
    vendor = engine.rsplit(".", 1)[-1]
    if vendor == "sqlite3":
        vendor = "sqlite"
    if vendor not in VENDORS:
        raise ConfigurationError(
            f"settings.DATABASES[{alias!r}] uses {engine!r}; the message store runs on "
            "SQLite (django.db.backends.sqlite3) or PostgreSQL (django.db.backends.postgresql)"
        )
    if database.get("AUTOCOMMIT", True) is False:
        raise ConfigurationError(
            f"settings.DATABASES[{alias!r}]['AUTOCOMMIT'] is False: Django then leaves "
            "transactions to the project and transaction.atomic() cannot make the view's "
            "writes and the stored response one transaction; remove the AUTOCOMMIT key"
        )
    if vendor == "postgresql":
        _check_isolation(alias, database.get("OPTIONS", {}).get("isolation_level"))


def _check_isolation(alias: str, level: Any) -> None:
    """READ COMMITTED only: a retry that waited on a concurrent claim must see its row.

    Under REPEATABLE READ or SERIALIZABLE the waiting claim fails with a serialisation
    error instead of reading the committed answer (docs/protocol.rst §2 step 4).
    """
    if level is None:
        return
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    if level != IsolationLevel.READ_COMMITTED:
        raise ConfigurationError(
            f"settings.DATABASES[{alias!r}]['OPTIONS']['isolation_level'] must be READ "
            "COMMITTED (the default) for certified requests: a retry waiting on a "
            "concurrent delivery must read its committed answer; remove the option"
        )


def _check_middleware_order(conf: ChttpSettings, middleware_class: type) -> None:
    """Listed once, and after the authentication middleware when the scope is the user."""
    entries = [_load(path) for path in settings.MIDDLEWARE]
    ours = [index for index, cls in enumerate(entries)
            if isinstance(cls, type) and issubclass(cls, middleware_class)]
    if len(ours) > 1:
        raise ConfigurationError(f"{MIDDLEWARE_PATH} is listed more than once in MIDDLEWARE")
    if not ours or conf.scope is not None or not apps.is_installed("django.contrib.auth"):
        return
    authentication = tuple(cls for cls in (_load(path) for path in _AUTHENTICATION)
                           if isinstance(cls, type))
    later = [settings.MIDDLEWARE[index] for index, cls in enumerate(entries)
             if index > ours[0] and isinstance(cls, type) and issubclass(cls, authentication)]
    if later:
        raise ConfigurationError(
            f"{later[0]} runs after {MIDDLEWARE_PATH}: every request would be in the "
            "anonymous scope, and one user's message ids could replay another's answers. "
            f"Move {MIDDLEWARE_PATH} after it in MIDDLEWARE (or set {SETTING_NAME}['SCOPE'])"
        )


#: The id of the system check warning :func:`check_upload_limit` returns.
UPLOAD_LIMIT_WARNING = "chttp.W001"


def request_body_limit(max_request_bytes: int) -> int:
    """The largest certified body a Django project can take: ours, or Django's if smaller.

    Django refuses to read a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (``request.body``
    raises ``RequestDataTooBig``, which Django answers with an HTML 400). The
    middleware reads the body for the fingerprint before the view, so it applies the
    smaller cap itself and answers 413 request-too-large problem+json, as every front end
    does (docs/protocol.rst §4).
    """
    django_cap = getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", None)
    if django_cap is None:
        return max_request_bytes
    return min(max_request_bytes, int(django_cap))


def upload_limit_problem(max_request_bytes: int) -> str | None:
    """What to say when Django's body cap is below ``CHTTP['MAX_REQUEST_BYTES']``, or None."""
    django_cap = getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", None)
    if django_cap is None or int(django_cap) >= max_request_bytes:
        return None
    return (f"settings.DATA_UPLOAD_MAX_MEMORY_SIZE ({django_cap} bytes) is below "
            f"{SETTING_NAME}['MAX_REQUEST_BYTES'] ({max_request_bytes} bytes): certified "
            f"requests with larger bodies are answered 413 request-too-large")


def check_upload_limit(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Django system check: warn (``chttp.W001``) when Django's body cap is below ours.

    A warning, not a refusal: a project may want the smaller cap; it then knows which
    of the two limits a certified client meets, and how to change it.
    """
    from django.core.checks import Warning as CheckWarning

    from chttp_server.django.conf import read_settings

    try:
        conf = read_settings(getattr(settings, SETTING_NAME, None))
    except ConfigurationError:
        return []  # refused with its own message when the middleware loads
    problem = upload_limit_problem(conf.max_request_bytes)
    if problem is None:
        return []
    return [CheckWarning(
        problem,
        hint=f"raise DATA_UPLOAD_MAX_MEMORY_SIZE to at least {conf.max_request_bytes}, or "
             f"lower {SETTING_NAME}['MAX_REQUEST_BYTES'] to {settings.DATA_UPLOAD_MAX_MEMORY_SIZE}",
        id=UPLOAD_LIMIT_WARNING,
    )]


def _load(path: str) -> Any:
    try:
        return import_string(path)
    except ImportError:
        return None
