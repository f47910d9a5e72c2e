"""Settings of the Django order service; the database comes from ``CHTTP_ORDERS_DB``.

``CHTTP_ORDERS_DB`` is a URL (``sqlite:///orders.db``, ``postgresql://user@host/db``):
orders and certified messages live in that one database. ``SHIPPING_URL`` is the base
URL of the shipping service; ``CHTTP_ORDERS_JOURNAL`` where the ship view's sends are
journaled (required on SQLite, another file; on PostgreSQL the same database is used).
The two chttp lines are marked.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy.engine import make_url


def database_from_url(url: str) -> dict[str, Any]:
    """``DATABASES["default"]`` for a SQLAlchemy-style URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parsed.database or ""}
    if parsed.get_backend_name() == "postgresql":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parsed.database or "",
            "USER": parsed.username or "",
            "PASSWORD": parsed.password or "",
            "HOST": parsed.host or "",
            "PORT": str(parsed.port or ""),
        }
    raise ValueError(f"CHTTP_ORDERS_DB must be a sqlite or postgresql URL, not {url!r}")


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-orders-example-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "chttp_examples.django_orders.urls"
WSGI_APPLICATION = "chttp_examples.django_orders.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "chttp_server.django",  # chttp: its migration creates the message store's tables
    "chttp_examples.django_orders.orders",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "chttp_server.django.CertifiedMiddleware",  # chttp: after authentication
]

DATABASES = {"default": database_from_url(os.environ.get("CHTTP_ORDERS_DB", "sqlite:///orders.db"))}

SHIPPING_URL = os.environ.get("SHIPPING_URL", "")

CHTTP: dict[str, Any] = {}
if os.environ.get("CHTTP_ORDERS_JOURNAL"):
    CHTTP["JOURNAL"] = os.environ["CHTTP_ORDERS_JOURNAL"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
