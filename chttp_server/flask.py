"""Flask integration: exactly-once views over the app's own Flask-SQLAlchemy ``db.session``.

::

    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from chttp_server.flask import Certified, current_message

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///orders.db"
    db = SQLAlchemy(app)
    Certified(app, db, upgrade_schema=True)      # or: ext = Certified(); ext.init_app(app, db)

    @app.post("/orders")
    def create_order():
        db.session.add(Order(item=request.json["item"]))
        db.session.commit()          # joins the message's transaction (see below)
        return {"id": ...}, 201

What it does: the app's WSGI callable is wrapped in
:class:`~chttp_server.CertifiedMiddleware`, storing messages **in the app's own
database, on the app's own engine** (``db.engine``; one SQLite file works), and
``db.session`` is joined to each certified request's transaction
(:mod:`chttp_server.sessions`): the view's ``db.session.commit()`` only releases a
SAVEPOINT, and the view's writes become durable with the stored response, or not at
all when the view raises or answers 5xx — so a retry runs the view again rather than
replaying a 500, and a crash between the view's commit and the response's leaves
nothing behind (docs/protocol.rst §2). Requests without ``X-Message-ID`` /
``Idempotency-Key`` are untouched: ``db.session`` behaves exactly as before.

``Certified(app, engine=engine)`` serves Flask apps without Flask-SQLAlchemy: views
then write through ``current_message().connection`` / ``.session``, or through their
own ``sessionmaker`` given as ``sessions=``. Every other keyword is a
:class:`~chttp_server.CertifiedMiddleware` option (``retention``, ``claim_timeout``,
``scope``, ``require_id``, ``journal``, …).

Views reach the message through one accessor, :func:`current_message`: its
``message_id``, ``scope``, ``persist()`` and ``post()``/``get()``/… for certified sends
of their own (``None`` outside certified requests).

On PostgreSQL, set ``SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}``: the store
fails closed either way (503 + ``Retry-After``, docs/protocol.rst §4), but without the
ping every connection the pool kept across a database restart costs one 503.

A configuration that cannot give the guarantee is refused when the extension is set
up, with a :class:`~chttp_server.ConfigurationError` naming the fix: ``db`` not set up
for this app, or messages stored in another database than ``db``'s.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from sqlalchemy import Engine

from chttp_core.db import configure_sqlite, make_engine, normalize_url
from chttp_core.store_urls import CREATE_HINT, check_store_url
from chttp_server.context import CertifiedContext, get_context
from chttp_server.errors import ConfigurationError
from chttp_server.middleware import CertifiedMiddleware
from chttp_server.sessions import same_database

__all__ = ["Certified", "current_message"]

#: The key of ``app.extensions`` under which the extension keeps its middleware.
EXTENSION_KEY = "chttp"


def current_message() -> CertifiedContext | None:
    """The certified message the current request carries, ``None`` if it carries no id.

    Has ``message_id``, ``scope``, ``received_at``, ``persist()``, ``checkpoint()`` and
    ``post()``/``get()``/``put()``/``patch()``/``delete()`` (certified sends whose ids
    derive from this message, resent identically when a failed attempt is retried).
    """
    return get_context(request.environ)


class Certified:
    """The Flask extension: ``Certified(app, db, **options)`` or ``init_app(app, db)``."""

    def __init__(
        self,
        app: Flask | None = None,
        db: Any = None,
        *,
        engine: Engine | None = None,
        **options: Any,
    ) -> None:
        self.db = db
        self.engine = engine
        self.options = options
        if app is not None:
            self.init_app(app, db)

    def init_app(self, app: Flask, db: Any = None, **options: Any) -> None:
        """Wrap ``app`` (see the module docstring); ``options`` add to the constructor's."""
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError("Certified is already set up on this Flask app")
        db = db if db is not None else self.db
        merged = {**self.options, **options}
        engine = merged.pop("engine", self.engine)
        db_url = merged.pop("db_url", None)
        sessions = merged.pop("sessions", ())
        sessions = list(sessions) if isinstance(sessions, (list, tuple)) else [sessions]
        if db is not None:
            app_engine = _engine_of(app, db)
            store = _store_engine(app_engine, engine, db_url)
            sessions.append(db.session)
        elif engine is not None or db_url is not None:
            if engine is not None and db_url is not None:
                raise ConfigurationError("give one of engine= or db_url=, not both")
            store = engine if engine is not None else _engine_for(db_url, merged)
        else:
            raise ConfigurationError(
                "Certified needs the app's Flask-SQLAlchemy object (Certified(app, db)) "
                "or an engine (Certified(app, engine=engine))"
            )
        configure_sqlite(store)
        middleware = CertifiedMiddleware(app.wsgi_app, engine=store, sessions=sessions, **merged)
        # Flask's documented way to add WSGI middleware; its stubs declare a method.
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = middleware

    @staticmethod
    def middleware(app: Flask) -> CertifiedMiddleware:
        """The :class:`CertifiedMiddleware` serving ``app`` (its ``store``, its ``engine``)."""
        try:
            middleware: CertifiedMiddleware = app.extensions[EXTENSION_KEY]
        except KeyError:
            raise ConfigurationError("Certified is not set up on this Flask app") from None
        return middleware


def _engine_of(app: Flask, db: Any) -> Engine:
    """``db``'s default engine for ``app``; refuse a ``db`` not set up for it."""
    try:
        with app.app_context():
            engine: Engine = db.engine
    except (RuntimeError, KeyError) as exc:
        raise ConfigurationError(
            "the SQLAlchemy object is not set up for this app: call db.init_app(app) "
            f"(or SQLAlchemy(app)) before Certified(app, db) ({exc})"
        ) from exc
    return engine


def _engine_for(db_url: str, options: dict[str, Any]) -> Engine:
    """An engine for ``db_url``, checked as every entry point checks one
    (:mod:`chttp_core.store_urls`: a missing SQLite file only with ``upgrade_schema``)."""
    create = bool(options.get("upgrade_schema", False))
    return make_engine(check_store_url(db_url, create=create, adapt=normalize_url,
                                       create_hint=CREATE_HINT))


def _store_engine(app_engine: Engine, engine: Engine | None, db_url: str | None) -> Engine:
    """The app's own engine, unless another on the same database is asked for."""
    if engine is not None and db_url is not None:
        raise ConfigurationError("give one of engine= or db_url=, not both")
    # The URL's spelling is checked here; its file, with the engine's, by the middleware.
    target = engine if engine is not None else (
        None if db_url is None else check_store_url(db_url, create=True, adapt=normalize_url))
    if target is None:
        return app_engine
    if not same_database(target, app_engine):
        url = target.url if isinstance(target, Engine) else target
        raise ConfigurationError(
            f"db.session writes to {app_engine.url.render_as_string()!r} but messages would "
            f"be stored in {url.render_as_string()!r}: a view's writes could not "
            "commit with its stored response. Drop engine=/db_url= so that Certified "
            "stores messages on the app's own engine"
        )
    return target if isinstance(target, Engine) else make_engine(target)
