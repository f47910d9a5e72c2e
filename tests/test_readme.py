"""The README is the front door: its commands must be the ones CI and users run."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.rst").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python -m pytest"
    assert f"\n    {command}\n" in readme
    assert f"\n{command}\n" in ci


# -- "Wrapping your application": every snippet runs as written -------------------------

import os  # noqa: E402
import re  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402
import webtest  # noqa: E402

WRAPPING = "Wrapping your application"


def wrapping_snippets() -> list[str]:
    """The python code blocks of the README's "Wrapping your application" section."""
    text = (ROOT / "README.rst").read_text()
    heading = f"\n{WRAPPING}\n{'=' * len(WRAPPING)}\n"
    section = text[text.index(heading) + len(heading):]
    following = re.search(r"\n[^\n]+\n=+\n", section)  # the next top-level heading
    section = section[:following.start()] if following else section
    blocks = []
    for part in section.split(".. code-block:: python\n")[1:]:
        lines = []
        for line in part.splitlines()[1:]:  # the first line is the blank after the directive
            if line and not line.startswith("    "):
                break
            lines.append(line)
        blocks.append(textwrap.dedent("\n".join(lines)))
    return blocks


def test_the_wrapping_section_has_flask_plain_sqlalchemy_and_wsgi_snippets():
    snippets = wrapping_snippets()
    assert len(snippets) >= 3
    assert any("chttp_server.flask" in snippet for snippet in snippets)
    assert any("sessions=Session" in snippet for snippet in snippets)
    assert any("get_context(environ)" in snippet for snippet in snippets)


@pytest.mark.parametrize("index", range(3))
def test_wrapping_snippet_runs_as_written(index, tmp_path, monkeypatch):
    snippet = wrapping_snippets()[index]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"readme_snippet_{index}"}
    exec(compile(snippet, f"README.rst snippet {index}", "exec"), namespace)
    app = webtest.TestApp(namespace["app"])
    try:
        def post(message_id):
            return app.post_json("/orders", {"item": "tea"}, headers={"X-Message-ID": message_id})

        first = post("readme-1")
        again = post("readme-1")
        other = post("readme-2")
        assert first.status_int == 201
        assert "Idempotent-Replayed" not in first.headers
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.body == first.body
        assert "Idempotent-Replayed" not in other.headers
    finally:
        engine = getattr(namespace["app"], "engine", None) or namespace.get("engine")
        if engine is None and "db" in namespace:
            from chttp_server.flask import Certified

            engine = Certified.middleware(namespace["app"]).engine
        if engine is not None:
            engine.dispose()
    assert os.listdir(tmp_path)  # the snippet's database lives in the working directory


# -- "Wrapping your application", Django: the settings and the view, as written ---------


def test_django_snippets_run_as_written(tmp_path):
    """The README's settings lines and view, in a project of their own, served by waitress."""
    import httpx

    from tests.examples.django_live import DjangoServer, django_env, manage

    snippets = wrapping_snippets()
    (settings_snippet,) = [s for s in snippets if "chttp_server.django.CertifiedMiddleware" in s]
    (view_snippet,) = [s for s in snippets if "request.chttp" in s]
    (tmp_path / "readme_settings.py").write_text(
        'SECRET_KEY = "readme"\nALLOWED_HOSTS = ["*"]\nUSE_TZ = True\n'
        'ROOT_URLCONF = "readme_urls"\n'
        f'DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", '
        f'"NAME": {str(tmp_path / "readme.db")!r}}}}}\n\n' + settings_snippet)
    (tmp_path / "readme_views.py").write_text(view_snippet)
    (tmp_path / "readme_urls.py").write_text(
        "from django.urls import path\nfrom readme_views import create_order\n"
        'urlpatterns = [path("orders", create_order)]\n')
    env = django_env(f"sqlite:///{tmp_path / 'readme.db'}", tmp_path,
                     DJANGO_SETTINGS_MODULE="readme_settings")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    manage(env, "migrate")
    with DjangoServer(env) as server, httpx.Client(timeout=30) as client:
        def post(message_id):
            return client.post(f"{server.url}/orders", json={"item": "tea"},
                               headers={"X-Message-ID": message_id})

        first = post("readme-1")
        again = post("readme-1")
        other = post("readme-2")
    assert first.status_code == 201, first.text
    assert first.json()["message"] == "readme-1"
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert "Idempotent-Replayed" not in other.headers
    assert other.json()["id"] != first.json()["id"]
