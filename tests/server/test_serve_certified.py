"""``chttp-server serve`` and applications that certify themselves (issue 25 item 6).

An application already wrapped — a ``CertifiedMiddleware``, a Flask app with
``Certified``, a Django project with the middleware — is served as it is, on its own
store, or refused at start-up with what to do; never wrapped a second time and then
answered 500 on every certified request. (The README's snippets are served for real,
by ``chttp-server serve``, waitress and gunicorn, in tests/test_readme.py.)
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from chttp_server import CertifiedMiddleware
from chttp_server.certified_apps import certification_of
from chttp_server.cli import main

PLAIN = """
from chttp_server import CertifiedMiddleware

def hello(environ, start_response):
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"hello"]

app = CertifiedMiddleware(hello, db_url="sqlite:///{db}", upgrade_schema=True)
"""

FLASK = """
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from chttp_server.flask import Certified

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///{db}"
db = SQLAlchemy(app)
Certified(app, db, upgrade_schema=True)

@app.post("/orders")
def create_order():
    return {{"ok": True}}, 201
"""


def _module(tmp_path: Path, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def _wsgi_app(environ, start_response):  # pragma: no cover - never called
    start_response("200 OK", [])
    return [b""]


class _ProxyFix:
    """A wrapper that keeps its application in ``.app``, as Werkzeug's ProxyFix does."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):  # pragma: no cover - never called
        return self.app(environ, start_response)


def test_certification_is_found_through_wrappers(tmp_path):
    middleware = CertifiedMiddleware(_wsgi_app, db_url=f"sqlite:///{tmp_path / 'm.db'}",
                                     upgrade_schema=True)
    try:
        found = certification_of(_ProxyFix(_ProxyFix(middleware)))
        assert found is not None and found.kind == "CertifiedMiddleware"
        assert found.engine is middleware.engine and "m.db" in found.where
        assert certification_of(_ProxyFix(_wsgi_app)) is None
        assert certification_of(_wsgi_app) is None
    finally:
        middleware.engine.dispose()


def test_a_flask_app_with_certified_is_found(tmp_path):
    from flask import Flask

    from chttp_server.flask import Certified

    app = Flask(__name__)
    assert certification_of(app) is None
    Certified(app, db_url=f"sqlite:///{tmp_path / 'f.db'}", upgrade_schema=True)
    found = certification_of(app)
    assert found is not None and found.kind == "Flask Certified"
    Certified.middleware(app).engine.dispose()


@pytest.mark.parametrize("source", [pytest.param(PLAIN, id="plain"),
                                    pytest.param(FLASK, id="flask")])
def test_serve_refuses_a_db_other_than_the_apps_own(tmp_path, monkeypatch, capsys, source):
    monkeypatch.chdir(tmp_path)
    name = _module(tmp_path, f"certified_{source is FLASK and 'flask' or 'plain'}_other",
                   source.format(db=tmp_path / "own.db"))
    (tmp_path / "other.db").touch()
    status = main(["serve", "--app", f"{name}:app", "--db", "sqlite:///other.db", "--port", "0"])
    error = capsys.readouterr().err.strip()
    assert status == 2, error
    assert error.startswith("chttp-server: error: ") and "already certified" in error
    assert "own.db" in error and "drop --db" in error


def test_serve_without_db_refuses_an_app_that_is_not_certified(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _module(tmp_path, "bare_app_no_db", "def app(environ, start_response):\n    return []\n")
    status = main(["serve", "--app", "bare_app_no_db:app", "--port", "0"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "is not certified yet" in error and "--db" in error


@pytest.mark.parametrize("source,with_db", [
    pytest.param(PLAIN, False, id="plain"),
    pytest.param(FLASK, False, id="flask"),
    pytest.param(FLASK, True, id="flask-same-db"),
])
def test_serve_runs_an_already_certified_app_as_it_is(tmp_path, source, with_db):
    """Before: every certified request answered 500 (the middleware stacked twice)."""
    db = tmp_path / "own.db"
    _module(tmp_path, "certified_app", source.format(db=db))
    argv = [sys.executable, "-m", "chttp_server.cli", "serve", "--app", "certified_app:app",
            "--port", "0"] + (["--db", f"sqlite:///{db}"] if with_db else [])
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert " on http://" in line, line
        url = line.rsplit(" on ", 1)[1].strip()
        headers = {"X-Message-ID": "serve-1"}
        first = httpx.post(f"{url}/orders", content=b"{}", headers=headers, timeout=60)
        again = httpx.post(f"{url}/orders", content=b"{}", headers=headers, timeout=60)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert first.status_code == 201, first.text
    assert again.headers["Idempotent-Replayed"] == "true" and again.content == first.content
    assert "certified_app:app is already certified" in stderr and "serving it as it is" in stderr
