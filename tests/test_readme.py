"""The README is the front door: its snippets and commands run as written, and work together.

The receiver and sender snippets are copied out of README.rst into files, the receiver is
served by the README's own ``chttp-server serve`` command (with ``--port 0`` instead of
8080, so the test never collides with anything), the sender script calls it, a retry is
answered from the store, and an interrupted send is finished by ``chttp-client resume``
exactly as the README's transcript shows. Everything runs as real processes on loopback.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import webtest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text()

pytestmark = pytest.mark.slow


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.rst").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python -m pytest"
    assert f"\n    {command}\n" in readme
    assert f"\n{command}\n" in ci


def _python_block(first_line: str) -> str:
    """The ``.. code-block:: python`` whose first line is ``first_line``, dedented."""
    for block in re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", README):
        code = textwrap.dedent(block)
        if code.startswith(first_line):
            return code
    raise AssertionError(f"no python block starting with {first_line!r} in README.rst")


def _command(prefix: str) -> list[str]:
    """The README's command line starting with ``prefix`` (continuation lines joined)."""
    text = README.replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        if line.startswith(prefix):
            return shlex.split(line.split("  #", 1)[0])
    raise AssertionError(f"no command starting with {prefix!r} in README.rst")


def _as_module(argv: list[str]) -> list[str]:
    """``chttp-server …`` / ``chttp-client …`` / ``python …`` with this interpreter."""
    modules = {"chttp-server": "chttp_server.cli", "chttp-client": "chttp_client.cli"}
    if argv[0] in modules:
        return [sys.executable, "-m", modules[argv[0]], *argv[1:]]
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


@contextmanager
def _serving(argv: list[str], cwd: Path) -> Iterator[str]:
    process = subprocess.Popen(_as_module(argv), cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if " on http://" not in line:
            process.kill()
            raise AssertionError(f"serve did not start: {line}{process.communicate()[1]}")
        yield line.rsplit(" on ", 1)[1].strip()
    finally:
        process.terminate()
        process.communicate(timeout=30)   # waits, and closes the pipes


def _with_port(argv: list[str], port: int | str) -> list[str]:
    at = argv.index("--port")
    return [*argv[:at + 1], str(port), *argv[at + 2:]]


def _run(argv: list[str], cwd: Path, **options) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_as_module(argv), cwd=cwd, capture_output=True, text=True,
                          timeout=120, **options)


def _rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT ref, amount FROM transfers").fetchall()


def test_the_receiver_and_the_sender_work_together_as_written(tmp_path):
    (tmp_path / "transfers.py").write_text(_python_block("# transfers.py"))
    (tmp_path / "sender.py").write_text(_python_block("# sender.py"))
    serve = _command("chttp-server serve --app transfers:Root --db sqlite:///receiver.db --upgrade")
    sender = _command("python sender.py")

    with _serving(_with_port(serve, 0), tmp_path) as url:
        sent = _run([*sender, url], tmp_path)
        assert sent.returncode == 0, sent.stderr
        assert re.fullmatch(r"transfer [0-9a-f]{32}\n", sent.stdout), sent.stdout

        # A retry of a certified request is answered from the store, not run again.
        headers = {"X-Message-ID": "2f1c0e4a-demo"}
        first = httpx.post(f"{url}/transfers", json={"ref": 1, "amount": 5}, headers=headers)
        again = httpx.post(f"{url}/transfers", json={"ref": 1, "amount": 5}, headers=headers)
        assert first.status_code == again.status_code == 200
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.content == first.content and "Idempotent-Replayed" not in first.headers

        # Without an id the handler's documented refusal, not a crash.
        bare = httpx.post(f"{url}/transfers", json={"ref": 2, "amount": 5})
        assert bare.status_code == 400
        assert bare.json()["type"].endswith("message-id-required")
    assert len(_rows(tmp_path / "receiver.db")) == 2

    listed = _run(["chttp-client", "list", "--all", "--db", "sqlite:///sender.db"], tmp_path)
    assert listed.returncode == 0 and " done " in listed.stdout
    assert "sender.start_transfer v1" in listed.stdout   # not __main__.start_transfer


def test_the_async_sender_works_with_the_receiver_as_written(tmp_path):
    """The "Async resumable functions" snippet, run as a script against the README's receiver."""
    (tmp_path / "transfers.py").write_text(_python_block("# transfers.py"))
    (tmp_path / "async_sender.py").write_text(_python_block("# async_sender.py"))
    serve = _command("chttp-server serve --app transfers:Root --db sqlite:///receiver.db --upgrade")

    with _serving(_with_port(serve, 0), tmp_path) as url:
        sent = _run(["python", "async_sender.py", url], tmp_path)
        assert sent.returncode == 0, sent.stderr
        assert re.fullmatch(r"transfers [0-9a-f]{32} [0-9a-f]{32}\n", sent.stdout), sent.stdout
        ids = sent.stdout.split()[1:]
        resumed = _run(["chttp-client", "resume", "--db", "sqlite:///async_sender.db",
                        "--import", "async_sender"], tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.strip() == "0 open oplog(s): nothing to do"
    with sqlite3.connect(tmp_path / "receiver.db") as connection:
        rows = connection.execute("SELECT id, amount FROM transfers ORDER BY amount").fetchall()
    assert [amount for _id, amount in rows] == [5, 7] and sorted(ids) == sorted(i for i, _a in rows)
    listed = _run(["chttp-client", "list", "--all", "--db", "sqlite:///async_sender.db"], tmp_path)
    assert listed.stdout.count("async_sender.start_transfer v1") == 2
    assert listed.stdout.count(" done ") == 2


def test_an_interrupted_send_is_finished_by_chttp_client_resume(tmp_path):
    (tmp_path / "transfers.py").write_text(_python_block("# transfers.py"))
    (tmp_path / "sender.py").write_text(_python_block("# sender.py"))
    serve = _with_port(_command("chttp-server serve --app transfers:Root --db sqlite:///receiver.db"
                                " --host 127.0.0.1"), 0)
    assert "--threads" in serve and "--claim-timeout" in serve       # the Serving section's
    upgraded = _run(_command("chttp-server db upgrade --db sqlite:///receiver.db"), tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    with _serving(serve, tmp_path) as url:
        port = url.rsplit(":", 1)[1]
    # The receiver is down: the send is recorded, then retried until the sender is killed.
    sending = subprocess.Popen([sys.executable, "sender.py", url], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listing = ["chttp-client", "list", "--db", "sqlite:///sender.db"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (tmp_path / "sender.db").exists():
            listed = _run(listing, tmp_path)
            if " open " in listed.stdout:
                break
        time.sleep(0.2)
    else:
        raise AssertionError("the sender never recorded its oplog")
    sending.kill()
    sending.communicate(timeout=30)
    assert sending.returncode == -signal.SIGKILL
    [oplog_id] = [line.split()[0] for line in _run(listing, tmp_path).stdout.splitlines()]
    shown = _run(["chttp-client", "show", "--db", "sqlite:///sender.db", oplog_id], tmp_path)
    assert "send     recorded" in shown.stdout, shown.stdout

    with _serving(_with_port(serve, port), tmp_path):
        resumed = _run(_command("chttp-client resume --db sqlite:///sender.db --import sender"),
                       tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{oplog_id}  sender.start_transfer v1  done" in resumed.stdout
    assert resumed.stdout.strip().endswith("1 open oplog(s): 1 done")
    assert len(_rows(tmp_path / "receiver.db")) == 1    # importing sender.py sent nothing new
    assert _run(listing, tmp_path).stdout == ""
    purged = _run(_command("chttp-client purge --db sqlite:///sender.db --older-than-days 0"),
                  tmp_path)
    assert purged.returncode == 0 and purged.stdout.strip() == "1 oplog(s) purged"


def test_the_schema_commands_run_as_written(tmp_path):
    for prefix in ("chttp-server db upgrade --db sqlite:///receiver.db",
                   "chttp-server db current --db sqlite:///receiver.db",
                   "chttp-server purge --db sqlite:///receiver.db"):
        result = _run(_command(prefix), tmp_path)
        assert result.returncode == 0, (prefix, result.stderr)


def test_the_error_example_is_what_the_command_prints(tmp_path):
    argv = _command("chttp-server db current --db sqlite:///recieve.db")
    result = _run(argv, tmp_path)
    documented = next(line.strip() for line in README.splitlines()
                      if line.strip().startswith("chttp-server: error: no database at"))
    assert result.returncode == 2 and list(tmp_path.iterdir()) == []
    assert result.stderr.strip() == documented.replace("/home/me", str(tmp_path))


# -- "Wrapping your application": every snippet runs as written -------------------------


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
