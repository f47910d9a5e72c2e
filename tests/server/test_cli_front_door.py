"""The command lines' smaller front-door promises (issue 25 item 8).

No traceback into a closed pipe; a missing extra named in one line; received messages
listed and shown from the shell (``chttp-server messages``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import webtest

from chttp_server import CertifiedMiddleware
from tests.server.live import REPO_ROOT


def _cli(*argv: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chttp_server.cli", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _app(environ, start_response):
    start_response("201 Created", [("Content-Type", "application/json")])
    return [b'{"made": true}']


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A SQLite store holding three answered messages."""
    url = f"sqlite:///{tmp_path / 'receiver.db'}"
    middleware = CertifiedMiddleware(_app, db_url=url, upgrade_schema=True)
    app = webtest.TestApp(middleware)
    for number in range(3):
        app.post("/orders", b"{}", headers={"X-Message-ID": f"order-{number}"})
    middleware.engine.dispose()
    return url


def test_messages_list_prints_one_line_per_message(store: str) -> None:
    listed = _cli("messages", "list", "--db", store)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[3] for line in lines] == ["order-2", "order-1", "order-0"]
    assert all(line.split()[1:3] == ["completed", "201"] for line in lines)
    limited = _cli("messages", "list", "--db", store, "--limit", "1")
    assert len(limited.stdout.splitlines()) == 1 and "1 of 3 shown" in limited.stderr


def test_messages_list_json_is_one_object_per_line(store: str) -> None:
    listed = _cli("messages", "list", "--db", store, "--json", "--id", "order-1")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(row["message_id"], row["status"], row["state"]) for row in rows] == [
        ("order-1", 201, "completed")]


def test_messages_show_prints_the_stored_response(store: str) -> None:
    shown = _cli("messages", "show", "--db", store, "order-1")
    assert shown.returncode == 0, shown.stderr
    assert "status    201" in shown.stdout and '{"made": true}' in shown.stdout
    as_json = json.loads(_cli("messages", "show", "--db", store, "order-1", "--json").stdout)
    assert as_json["body"] == '{"made": true}' and as_json["message_id"] == "order-1"
    missing = _cli("messages", "show", "--db", store, "order-9")
    assert missing.returncode == 1 and "no message 'order-9'" in missing.stderr


def test_messages_list_creates_no_database(tmp_path: Path) -> None:
    listed = _cli("messages", "list", "--db", "sqlite:///nothing.db", cwd=tmp_path)
    assert listed.returncode == 2 and "no database at" in listed.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    pytest.param(["chttp_server.cli", "messages", "list"], id="chttp-server-messages"),
    pytest.param(["chttp_client.cli", "list", "--all"], id="chttp-client-list"),
])
def test_no_traceback_into_a_closed_pipe(store: str, argv: list[str], tmp_path: Path) -> None:
    """`… | head`: the reader is gone before we write; we stop quietly, 141 as for SIGPIPE."""
    if argv[0] == "chttp_client.cli":
        from chttp_client import Journal, resumable

        with Journal(store) as journal:
            @resumable(journal, name="tests.pipe.job")
            def job(*, chttp_context):
                return chttp_context.persist(1)

            for _ in range(3):
                job()
    process = subprocess.Popen([sys.executable, "-m", *argv, "--db", store], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.close()            # as `head` does once it has read enough
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert process.returncode == 141


def test_demo_console_without_jinja2_is_one_line_naming_the_extra() -> None:
    script = ("import sys\nsys.modules['jinja2'] = None   # as if not installed\n"
              "from chttp_server.cli import main\n"
              "sys.exit(main(['demo', '--console', '--transfers', '1']))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("chttp-server: error: chttp-server demo --console needs jinja2")
    assert "pip install -e '.[console]'" in line


def test_the_console_without_jinja2_names_the_extra(store: str) -> None:
    script = ("import sys\nsys.modules['jinja2'] = None\n"
              "from chttp_server.cli import main\n"
              f"sys.exit(main(['console', '--db', {store!r}, '--port', '0']))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "pip install -e '.[console]'" in done.stderr
