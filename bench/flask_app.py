"""The benchmarked application as a Flask + Flask-SQLAlchemy app: ``flask-bare`` and
``flask-certified``.

The same ``POST /items`` as :mod:`bench.app` (one row into ``bench_items``), written the
way a Flask tutorial writes it: a model, ``db.session.add`` and ``db.session.commit()``
in the view. The two modes differ only by ``Certified(app, db)``
(:mod:`chttp_server.flask`), which joins ``db.session`` to the message's transaction, so
the rows measure what the Flask integration costs next to the raw WSGI middleware's
rows. No authentication, so every request is in the anonymous scope, like the WSGI rows.
The chttp tables are the bench database's own (made by the bench).

Gunicorn loads ``bench.flask_app:application``; ``BENCH_MODE`` and ``BENCH_DB_URL``
come from the environment; the app is built in the worker on the first request.
"""

from __future__ import annotations

import os
from typing import Any

from bench.app import BuiltOnFirstCall

__all__ = ["application", "make_app", "MODES"]

MODES = ("flask-bare", "flask-certified")


def make_app(mode: str, db_url: str) -> Any:
    """The Flask app in ``mode``, on the database at ``db_url``."""
    from flask import Flask, request
    from flask_sqlalchemy import SQLAlchemy

    from chttp_core.db import normalize_url

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = normalize_url(db_url).render_as_string(
        hide_password=False)
    db = SQLAlchemy(app)

    class Item(db.Model):  # type: ignore[name-defined,misc]  # Flask-SQLAlchemy's dynamic base
        __tablename__ = "bench_items"
        id = db.Column(db.Integer, primary_key=True)
        message_id = db.Column(db.String(128))
        payload = db.Column(db.Text)

    @app.post("/items")
    def items() -> Any:
        from chttp_server.flask import current_message

        message = current_message() if mode == "flask-certified" else None
        db.session.add(Item(message_id=message.message_id if message else None,
                            payload=request.get_data(as_text=True) or "{}"))
        db.session.commit()      # joined: commits with the stored response when certified
        return app.response_class(b'{"ok": true}', status=201, mimetype="application/json")

    @app.get("/pid")
    def pid() -> Any:
        return app.response_class(str(os.getpid()), mimetype="text/plain")

    if mode == "flask-certified":
        from chttp_server.flask import Certified

        Certified(app, db)
    return app


def _from_environment() -> Any:
    return make_app(os.environ.get("BENCH_MODE", "flask-bare"), os.environ["BENCH_DB_URL"])


#: Gunicorn's entry point; builds the app on first call (after the worker forks).
application = BuiltOnFirstCall(_from_environment)
