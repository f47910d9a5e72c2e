"""The console without a browser: HTTP rules, the command line, read-only access, charts.

Pages are requested with WebTest (its lint on) from a console over a store filled
through the real receiver and sender (:mod:`tests.console.fill`); the command line is
run as a real process and spoken to over loopback with httpx.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import zipfile
from datetime import datetime, timezone

import httpx
import pytest
import webtest
from sqlalchemy import delete, func, select
from sqlalchemy import exc as sa_exc

import chttp_server.console
from chttp_server.console import Actions, ConsoleApp, ConsoleDatabase
from chttp_server.console.chart import WINDOWS, draw, message_outcomes, oplog_outcomes
from chttp_server.console.cli import build_console
from chttp_server.console.present import preview_body
from chttp_server.errors import ConfigurationError
from chttp_server.testing import free_port
from chttp_core.schema import messages
from tests.console.fill import TOKEN
from tests.server.live import REPO_ROOT


@pytest.fixture(scope="module")
def read_only(store):
    app = build_console(db=store.db_url, journal=store.db_url)
    yield webtest.TestApp(app)
    app.close()


@pytest.fixture
def with_actions(store):
    app = build_console(db=store.db_url, journal=store.db_url, allow_actions=True, token=TOKEN)
    yield webtest.TestApp(app)
    app.close()


def _state(store, scope: str, message_id: str) -> str:
    database = ConsoleDatabase(store.db_url)
    try:
        with database.connect() as connection:
            return connection.execute(select(messages.c.state).where(
                messages.c.scope == scope, messages.c.message_id == message_id)).scalar_one()
    finally:
        database.dispose()


# -- HTTP -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/messages", "/message?scope=alice&id=order-1",
                                  "/oplogs", "/messages?state=expired&page=1"])
def test_every_page_is_html_under_a_policy_that_runs_only_the_console_script(read_only, path):
    page = read_only.get(path, status=200)
    assert page.content_type == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-store"
    assert page.html.find("script")["src"] == "/console.js"


def test_the_script_and_stylesheet_are_served(read_only):
    assert "location.reload" in read_only.get("/console.js").text
    assert read_only.get("/console.css").content_type == "text/css"


def test_a_read_only_console_refuses_every_action_even_with_a_token(read_only, store):
    for path, fields in [("/message/acknowledge", {"scope": "alice", "id": "order-1"}),
                         ("/oplog/resume", {"id": store.open_oplogs[0]})]:
        refused = read_only.post(path, {**fields, "token": TOKEN}, status=403)
        assert "read-only" in refused.html.find(id="problem").text
    assert _state(store, "alice", "order-1") == "completed"


def test_actions_need_the_right_token(with_actions, store):
    for token in ("", "x", TOKEN[:-1], TOKEN + "x"):
        with_actions.post("/message/acknowledge",
                          {"scope": "bob", "id": "order-3", "token": token}, status=403)
    assert _state(store, "bob", "order-3") == "completed"
    missing = with_actions.post("/message/acknowledge",
                                {"scope": "bob", "id": "nope", "token": TOKEN}, status=409)
    assert "no message 'nope'" in missing.html.find(id="result").text
    finished = with_actions.post("/oplog/resume", {"id": store.done_oplogs[0], "token": TOKEN},
                                 status=409)
    assert "is done: nothing to resume" in finished.html.find(id="result").text


def test_no_get_changes_state(with_actions, store):
    for path in ("/message/acknowledge?scope=bob&id=order-3&token=" + TOKEN,
                 "/oplog/resume?id=x&token=" + TOKEN):
        refused = with_actions.get(path, status=405)
        assert refused.headers["Allow"] == "POST"
    assert _state(store, "bob", "order-3") == "completed"


def test_a_console_on_loopback_answers_only_to_loopback_names(read_only):
    read_only.get("/", headers={"Host": "127.0.0.1:8090"}, status=200)
    read_only.get("/", headers={"Host": "[::1]:8090"}, status=200)
    refused = read_only.get("/", headers={"Host": "attacker.example:8090"}, status=403)
    assert "answers only to" in refused.html.find(id="problem").text


def test_a_console_bound_beyond_loopback_answers_its_allowed_names(store):
    app = build_console(db=store.db_url, journal=None, host="0.0.0.0",
                        allowed_hosts=["console.example"])
    try:
        webtest.TestApp(app).get("/", headers={"Host": "console.example"}, status=200)
        missing = webtest.TestApp(app).get("/oplogs", headers={"Host": "console.example"},
                                           status=404)
        assert "--journal" in missing.html.find(id="problem").text
    finally:
        app.close()


def test_unknown_pages_and_rows_are_404(read_only):
    read_only.get("/nope", status=404)
    read_only.get("/message?scope=alice&id=nope", status=404)
    read_only.get("/message?scope=bob&id=order-1", status=404)  # another scope's
    read_only.get("/oplog?id=nope", status=404)
    read_only.get("/messages?id=%ff", status=400)  # not UTF-8


def test_an_unreachable_database_is_a_503_page():
    app = ConsoleApp(db=ConsoleDatabase(f"postgresql://postgres@127.0.0.1:{free_port()}/x"),
                     journal=None)
    try:
        page = webtest.TestApp(app).get("/messages", status=503)
        assert "could not be read" in page.html.find(id="problem").text
        # The driver's words (host, port, server state) stay in the log (issue 23); the
        # footer names the database the console watches, as on every page.
        problem = page.html.find(id="problem").text
        assert "127.0.0.1" not in problem and "port" not in problem.lower()
        assert "OperationalError" not in page.text and "refused" not in page.text
    finally:
        app.close()


# -- read-only access ----------------------------------------------------------------


def test_the_console_connection_cannot_write(store):
    database = ConsoleDatabase(store.db_url)
    try:
        with database.connect() as connection:
            before = connection.execute(select(func.count()).select_from(messages)).scalar_one()
            with pytest.raises(sa_exc.DBAPIError):
                connection.execute(delete(messages))
            connection.rollback()
            after = connection.execute(select(func.count()).select_from(messages)).scalar_one()
        assert after == before == store.message_count
    finally:
        database.dispose()


def test_a_missing_sqlite_file_is_refused_not_created(tmp_path):
    path = tmp_path / "typo.db"
    with pytest.raises(ConfigurationError, match="no SQLite database"):
        ConsoleDatabase(f"sqlite:///{path}")
    assert not path.exists()


# -- charts and previews -------------------------------------------------------------


def test_the_charts_count_what_the_store_holds(store):
    database = ConsoleDatabase(store.db_url)
    now = datetime.now(timezone.utc)
    try:
        with database.connect() as connection:
            received = message_outcomes(connection, now, WINDOWS["24h"])
            started = oplog_outcomes(connection, now, WINDOWS["7d"])
    finally:
        database.dispose()
    totals = {key: sum(bucket[key] for bucket in received.counts) for key in ("ok", "refused",
                                                                           "acknowledged")}
    sends = sum(len(ids) for ids in store.send_ids.values())
    # old-1 was received 16 days ago: outside the window.
    assert totals == {"ok": len(store.completed) + sends, "refused": len(store.refused),
                      "acknowledged": len(store.acknowledged)}
    assert len(received.counts) == 24
    by_state = {key: sum(bucket[key] for bucket in started.counts) for key in ("done", "failed",
                                                                            "open")}
    assert by_state == {"done": len(store.done_oplogs), "failed": len(store.failed_oplogs),
                        "open": len(store.open_oplogs) + len(store.stalled_oplogs)}
    chart = draw(received)
    assert {bar.series for bar in chart.bars} == {"ok", "refused", "acknowledged"}
    assert all(0 <= bar.y <= chart.plot_height and bar.height > 0 for bar in chart.bars)
    assert chart.total == received.total == store.message_count - 1


def test_body_previews():
    text = preview_body(b'{"a": 1}', 8)
    assert (text.text, text.truncated) == ('{"a": 1}', False)
    cut = preview_body("é".encode() * 3000, 6000)
    assert cut.text == "é" * 2000 and cut.truncated
    split = preview_body("aé".encode()[:2], 100)  # a character cut by the preview's end
    assert split.text == "a"
    binary = preview_body(bytes(range(40)), 40)
    assert binary.text is None and binary.hexdump is not None
    assert binary.hexdump.splitlines()[0].startswith("000000  00 01 02")


# -- command line ------------------------------------------------------------------


def _console_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chttp_server.cli", "console", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, complaint", [
    pytest.param([], "give --db", id="no-database"),
    pytest.param(["--db", "sqlite:///{store}", "--allow-actions"], "needs a token", id="no-token"),
    pytest.param(["--db", "sqlite:///{store}", "--token", "t"], "without --allow-actions",
                 id="token-without-actions"),
    pytest.param(["--db", "sqlite:///{empty}"], "chttp-server db upgrade", id="no-schema"),
    pytest.param(["--db", "sqlite:///{missing}"], "no SQLite database", id="missing-file"),
    pytest.param(["--db", "sqlite:///{store}", "--allow-actions", "--token", "t" * 31],
                 "at least 32 characters", id="short-token"),
    pytest.param(["--db", "sqlite:///{store}", "--host", "0.0.0.0"], "--allowed-host",
                 id="every-address-without-allowed-hosts"),
    pytest.param(["--journal", "sqlite:///{store}", "--allow-actions", "--token", "t" * 32,
                  "--import", "no_such_module_here"], "--import no_such_module_here",
                 id="bad-import"),
])
def test_the_command_refuses_bad_configurations(tmp_path, sqlite_url, args, complaint):
    from chttp_core import migrate

    migrate.upgrade(sqlite_url)
    sqlite3.connect(tmp_path / "empty.db").close()
    paths = {"store": sqlite_url.removeprefix("sqlite:///"), "empty": tmp_path / "empty.db",
             "missing": tmp_path / "missing.db"}
    result = _console_command(*[arg.format(**paths) for arg in args])
    assert result.returncode == 2, result.stdout + result.stderr
    assert complaint in result.stderr


ENV_TOKEN = "from-the-environment-0123456789abcdef"


@pytest.mark.slow
def test_the_command_serves_the_console_and_its_actions(fresh_store):
    store = fresh_store
    process = subprocess.Popen(
        [sys.executable, "-m", "chttp_server.cli", "console", "--db", store.db_url,
         "--journal", store.db_url, "--port", "0", "--allow-actions"],
        cwd=REPO_ROOT, env={**os.environ, "CHTTP_CONSOLE_TOKEN": ENV_TOKEN},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("chttp-server console on http://127.0.0.1:"), line
        base = line.split(" on ", 1)[1].strip().rstrip("/")
        with httpx.Client(base_url=base, timeout=30) as client:
            overview = client.get("/")
            assert overview.status_code == 200
            assert 'id="count-acknowledged"' in overview.text
            fields = {"scope": "bob", "id": "order-4"}
            assert client.post("/message/acknowledge", data={**fields, "token": "x"}).status_code == 403
            assert client.post("/message/acknowledge",
                               data={**fields, "token": ENV_TOKEN}).status_code == 200
        assert _state(store, "bob", "order-4") == "acknowledged"
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


# -- packaging ---------------------------------------------------------------------


def test_the_public_names_are_pinned():
    assert chttp_server.console.__all__ == ["ConsoleApp", "ConsoleDatabase", "Actions",
                                            "ActionResult"]


@pytest.mark.slow
def test_the_wheel_ships_the_templates(built_wheel):
    names = set(zipfile.ZipFile(built_wheel).namelist())
    for name in ("base.html", "overview.html", "messages.html", "message.html", "oplogs.html",
                 "oplog.html", "chart.html", "pager.html", "action.html", "error.html",
                 "console.css", "console.js"):
        assert f"chttp_server/console/templates/{name}" in names


def test_long_lists_are_paged(db_url):
    from datetime import timedelta

    from sqlalchemy import insert

    from chttp_core import migrate
    from chttp_core.db import make_engine
    from chttp_core.schema import oplogs

    migrate.upgrade(db_url)
    now = datetime.now(timezone.utc)
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(insert(messages), [
                {"scope": "s", "message_id": f"m-{n:03}", "fingerprint": "0" * 64,
                 "state": "completed", "status": 200, "headers": "[]", "body": b"",
                 "received_at": now - timedelta(seconds=n), "expires_at": now + timedelta(days=1)}
                for n in range(120)])
            connection.execute(insert(oplogs), [
                {"id": f"o-{n:03}", "function": "f", "version": 1, "arguments": "{}",
                 "state": "done", "created_at": now - timedelta(seconds=n)} for n in range(51)])
    finally:
        engine.dispose()
    app = build_console(db=db_url, journal=db_url)
    try:
        client = webtest.TestApp(app)
        first = client.get("/messages?scope=s")
        ids = [a.text for a in first.html.select("#messages td.id a")]
        assert ids == [f"m-{n:03}" for n in range(50)]  # newest first
        assert "120 matching · page 1 of 3" in first.html.find(class_="pager").text
        second = first.click(linkid=None, href=r"page=2", index=0)
        assert [a.text for a in second.html.select("#messages td.id a")][0] == "m-050"
        third = client.get("/messages?scope=s&page=3")
        assert len(third.html.select("#messages td.id a")) == 20
        assert third.html.find("a", rel="prev")["href"] == "/messages?page=2&scope=s"
        assert third.html.find("a", rel="next") is None
        last = client.get("/oplogs?page=2")
        assert [a.text for a in last.html.select("#oplogs td.id a")] == ["o-050"]
    finally:
        app.close()


def test_an_abandoned_oplog_is_shown_as_abandoned(fresh_store):
    """The journal stores a dead-lettered oplog as failed with a reason; the console
    names it for what it is, so an operator can tell it from a function that raised."""
    from chttp_client import Journal

    victim = fresh_store.open_oplogs[0]
    with Journal(fresh_store.db_url, acknowledge=False) as journal:
        journal.abandon(victim, "operator: code changed")
    app = build_console(db=fresh_store.db_url, journal=fresh_store.db_url)
    try:
        page = webtest.TestApp(app).get("/oplogs")
        row = page.html.find("a", string=victim).find_parent("tr")
        assert "abandoned" in row["class"]
        assert all("abandoned" not in other["class"]
                   for other in page.html.select("#oplogs tbody tr") if other is not row)
    finally:
        app.close()


# -- token strength, guessing, Host (issue 23, item 6) ------------------------------------


def test_wrong_tokens_are_limited_then_actions_pause(fresh_store):
    """Ten wrong tokens a minute; then every action is refused 429 with Retry-After, the
    right token included, until the oldest wrong one is a minute old."""
    from chttp_core.db import normalize_url
    from chttp_server.console.actions import FAILURE_WINDOW, MAX_FAILURES

    now = [1000.0]
    actions = Actions(token=TOKEN, db_url=normalize_url(fresh_store.db_url), journal_url=None,
                      clock=lambda: now[0])
    app = ConsoleApp(db=ConsoleDatabase(fresh_store.db_url), journal=None, actions=actions)
    client = webtest.TestApp(app)
    fields = {"scope": "bob", "id": "order-3"}
    try:
        for guess in range(MAX_FAILURES):
            client.post("/message/acknowledge", {**fields, "token": f"guess-{guess}"}, status=403)
        now[0] += 10
        paused = client.post("/message/acknowledge", {**fields, "token": TOKEN}, status=429)
        assert paused.headers["Retry-After"] == str(int(FAILURE_WINDOW - 10))
        assert "too many wrong tokens" in paused.text
        assert _state(fresh_store, "bob", "order-3") == "completed"
        now[0] += FAILURE_WINDOW - 10
        client.post("/message/acknowledge", {**fields, "token": TOKEN}, status=200)
        assert _state(fresh_store, "bob", "order-3") == "acknowledged"
    finally:
        app.close()


def test_a_short_token_is_refused():
    from chttp_server.console.actions import MIN_TOKEN_LENGTH

    with pytest.raises(ConfigurationError, match="at least 32 characters"):
        Actions(token="x" * (MIN_TOKEN_LENGTH - 1), db_url=None, journal_url=None)
    Actions(token="x" * MIN_TOKEN_LENGTH, db_url=None, journal_url=None).close()


@pytest.mark.parametrize("host, allowed, expected", [
    pytest.param("127.0.0.1", [], ("127.0.0.1", "localhost", "::1"), id="loopback"),
    pytest.param("10.1.2.3", [], ("10.1.2.3",), id="an-address-itself"),
    pytest.param("console.internal", [], ("console.internal",), id="a-name-itself"),
    pytest.param("0.0.0.0", ["Console.Example", "10.1.2.3"], ("console.example", "10.1.2.3"),
                 id="every-address-with-names"),
])
def test_the_host_check_stays_on_beyond_loopback(host, allowed, expected):
    from chttp_server.console.cli import allowed_hosts_for

    assert allowed_hosts_for(host, allowed) == expected


def test_every_address_without_names_is_refused():
    from chttp_server.console.cli import allowed_hosts_for

    for host in ("0.0.0.0", "::", "[::]"):
        with pytest.raises(ConfigurationError, match="--allowed-host"):
            allowed_hosts_for(host)


def test_a_console_on_every_address_answers_only_its_names(store):
    app = build_console(db=store.db_url, journal=None, host="0.0.0.0",
                        allowed_hosts=["console.example"])
    try:
        client = webtest.TestApp(app)
        client.get("/", headers={"Host": "console.example:8090"}, status=200)
        refused = client.get("/", headers={"Host": "rebound.attacker.example"}, status=403)
        assert "console.example" in refused.text
    finally:
        app.close()


def test_a_message_committed_without_its_response_is_counted_and_listed(fresh_store):
    """A handler that sent COMMIT itself leaves a completed row without a response: the
    overview counts it (outcome unknown, flagged) and the list filters it (issue 23)."""
    from sqlalchemy import insert

    from chttp_core.db import make_engine

    engine = make_engine(fresh_store.db_url)
    try:
        with engine.begin() as connection:
            now = datetime.now(timezone.utc)
            connection.execute(insert(messages).values(
                scope="carol", message_id="wedged-1", fingerprint="f" * 64, state="completed",
                received_at=now, expires_at=now.replace(year=now.year + 1)))
    finally:
        engine.dispose()
    app = build_console(db=fresh_store.db_url, journal=None)
    try:
        client = webtest.TestApp(app)
        overview = client.get("/")
        assert overview.html.find(id="count-outcome-unknown").text.strip() == "1"
        assert "alert" in overview.html.find(id="count-outcome-unknown").parent["class"]
        listed = client.get("/messages?state=outcome-unknown")
        assert "wedged-1" in listed.text
        assert "order-" not in listed.text  # the filled store's complete rows are not listed
    finally:
        app.close()
