"""Start-up checks: a project that cannot get the guarantee is refused, naming the fix.

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

__all__ = ["check_configuration", "APP_NAME", "MIDDLEWARE_PATH"]

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


def _load(path: str) -> Any:
    try:
        return import_string(path)
    except ImportError:
        return None
