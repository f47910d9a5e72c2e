"""The ``CHTTP = {...}`` setting, read and checked once when the middleware starts.

Every option of the WSGI middleware a Django project may want lives in one dict, with
the same defaults (:class:`chttp_server.CertifiedMiddleware`)::

    CHTTP = {
        "DATABASE": "default",              # the alias whose connection runs the messages
        "RETENTION": timedelta(days=15),    # or seconds; docs/protocol.rst §4
        "CLAIM_TIMEOUT": 5.0,               # seconds a retry waits for a concurrent one
        "SCOPE": None,                      # None: the authenticated user's id (see below)
        "REQUIRE_ID": None,                 # ["POST", "PUT"], or a callable(request) -> bool
        "MESSAGE_PREFIX": "/chttp/messages/",
        "MAX_REQUEST_BYTES": 10 * 1024 * 1024,
        "MAX_RESPONSE_BYTES": 8 * 1024 * 1024,
        "RETRY_AFTER": 1,                   # seconds, on 503 store-unavailable
        "JOURNAL": None,                    # handler sends: a Journal or a URL (see below)
        "HANDLER_SEND_DEADLINE": timedelta(seconds=30),
        "PREPARED_STATEMENTS": False,       # True: PREPARE the store's statements (see below)
    }

``DATABASE`` is the alias whose connection runs each certified request's transaction,
so it must be the alias the views write to: writes through another alias are not part
of the message's transaction. ``SCOPE`` and a callable ``REQUIRE_ID`` may be dotted paths. The default scope is the
authenticated user's primary key when ``AuthenticationMiddleware`` runs before the
certified middleware, and the anonymous scope ``""`` otherwise (docs/protocol.rst §1).

``JOURNAL``: where views' own certified sends (``request.chttp.post(...)``) are
journaled. The journal must commit outside the request's transaction, so it never
shares Django's connection: ``None`` means a journal on its own connections to the same
PostgreSQL database; on SQLite name another file (``"sqlite:///outgoing.db"``).

``PREPARED_STATEMENTS``: on PostgreSQL through psycopg2, the store's claim and stored
response become server-side prepared statements, prepared once per Django connection
(with persistent connections, ``CONN_MAX_AGE``, once per connection's life): the server
then neither parses nor plans them on every request. With Django's default
``CONN_MAX_AGE = 0`` every request opens a connection and would prepare both again, two
more round trips: leave it off then. Only on direct connections to
PostgreSQL, as for the WSGI middleware's ``prepared_statements=True``: behind PgBouncer
in transaction mode the next transaction may run in a session that never saw the
``PREPARE`` (docs/scale.rst). Off by default.

A key this module does not know is refused: a typo would otherwise silently keep a
default the project thought it had changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, cast

from django.utils.module_loading import import_string

from chttp_server.decisions import DEFAULT_MAX_REQUEST_BYTES
from chttp_server.errors import ConfigurationError
from chttp_server.middleware import require_for_methods

__all__ = ["ChttpSettings", "read_settings", "SETTING_NAME"]

SETTING_NAME = "CHTTP"

_DEFAULTS: dict[str, Any] = {
    "DATABASE": "default",
    "RETENTION": timedelta(days=15),
    "CLAIM_TIMEOUT": 5.0,
    "SCOPE": None,
    "REQUIRE_ID": None,
    "MESSAGE_PREFIX": "/chttp/messages/",
    "MAX_REQUEST_BYTES": DEFAULT_MAX_REQUEST_BYTES,
    "MAX_RESPONSE_BYTES": 8 * 1024 * 1024,
    "RETRY_AFTER": 1,
    "JOURNAL": None,
    "HANDLER_SEND_DEADLINE": timedelta(seconds=30),
    "PREPARED_STATEMENTS": False,
}


@dataclass(frozen=True)
class ChttpSettings:
    """The checked ``CHTTP`` setting."""

    database: str
    retention: timedelta
    claim_timeout: float
    #: ``callable(request) -> str``, or ``None`` for the default (the user's id).
    scope: Callable[[Any], str] | None
    #: ``callable(request) -> bool``: this request must carry an id.
    require_id: Callable[[Any], bool] | None
    message_prefix: str
    max_request_bytes: int
    max_response_bytes: int
    retry_after: int
    #: A ``chttp_client.Journal``, a URL, or ``None`` (see the module docstring).
    journal: Any
    handler_send_deadline: timedelta | None
    #: Prepare the store's statements once per connection (see the module docstring).
    prepared_statements: bool


def read_settings(raw: Any) -> ChttpSettings:
    """Check ``settings.CHTTP`` (``None`` when absent) and fill in the defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigurationError(f"settings.{SETTING_NAME} must be a dict, not {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_DEFAULTS))
    if unknown:
        raise ConfigurationError(
            f"settings.{SETTING_NAME} has unknown keys {unknown}; the keys are "
            f"{sorted(_DEFAULTS)}"
        )
    values = {**_DEFAULTS, **raw}
    prefix = values["MESSAGE_PREFIX"]
    if not (isinstance(prefix, str) and prefix.startswith("/") and prefix.endswith("/")):
        raise ConfigurationError(f"{SETTING_NAME}['MESSAGE_PREFIX'] must start and end with '/'")
    deadline = values["HANDLER_SEND_DEADLINE"]
    return ChttpSettings(
        database=_alias(values["DATABASE"]),
        retention=_duration("RETENTION", values["RETENTION"]),
        claim_timeout=_positive("CLAIM_TIMEOUT", values["CLAIM_TIMEOUT"]),
        scope=_callable("SCOPE", values["SCOPE"]),
        require_id=_require_id(values["REQUIRE_ID"]),
        message_prefix=prefix,
        max_request_bytes=_count("MAX_REQUEST_BYTES", values["MAX_REQUEST_BYTES"]),
        max_response_bytes=_count("MAX_RESPONSE_BYTES", values["MAX_RESPONSE_BYTES"]),
        retry_after=_count("RETRY_AFTER", values["RETRY_AFTER"]),
        journal=values["JOURNAL"],
        handler_send_deadline=None if deadline is None else _duration("HANDLER_SEND_DEADLINE", deadline),
        prepared_statements=_flag("PREPARED_STATEMENTS", values["PREPARED_STATEMENTS"]),
    )


def _alias(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{SETTING_NAME}['DATABASE'] must be a database alias (a str)")
    return value


def _duration(key: str, value: Any) -> timedelta:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = timedelta(seconds=value)
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ConfigurationError(f"{SETTING_NAME}[{key!r}] must be a positive timedelta or seconds")
    return value


def _positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"{SETTING_NAME}[{key!r}] must be a positive number of seconds")
    return float(value)


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{SETTING_NAME}[{key!r}] must be a non-negative int")
    return value


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{SETTING_NAME}[{key!r}] must be True or False")
    return value


def _callable(key: str, value: Any) -> Callable[[Any], Any] | None:
    if value is None or callable(value):
        return cast("Callable[[Any], Any] | None", value)
    if isinstance(value, str):
        try:
            imported = import_string(value)
        except ImportError as exc:
            raise ConfigurationError(f"{SETTING_NAME}[{key!r}]: cannot import {value!r}: {exc}") from exc
        if callable(imported):
            return cast("Callable[[Any], Any]", imported)
    raise ConfigurationError(f"{SETTING_NAME}[{key!r}] must be a callable or its dotted path")


def _require_id(value: Any) -> Callable[[Any], bool] | None:
    """A list of methods, or a callable(request) -> bool (or its dotted path)."""
    if isinstance(value, (list, tuple, set, frozenset)):
        policy = require_for_methods(*(str(method) for method in value))
        return lambda request: policy(request.META)
    return _callable("REQUIRE_ID", value)
