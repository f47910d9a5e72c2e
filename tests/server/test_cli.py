"""``chttp-server`` says what is wrong in one line, with the right exit status, and creates nothing.

Exit status 2: the command line or the configuration it names cannot work; 1: the world
did not cooperate (a database that does not answer, a schema that is missing, a port
that is taken). Every case runs against real SQLite files, the session's real PostgreSQL
cluster, or a closed loopback port for a PostgreSQL that does not answer.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from sqlalchemy import inspect, text

from chttp_core import migrate
from chttp_core.db import make_engine
from chttp_server.cli import build_parser, main
from chttp_server.testing import free_port


def run(capsys, *argv):
    """``main(argv)`` → (status, the one stderr line); fails on a traceback or a second line."""
    try:
        status = main(list(argv))
    except SystemExit as exit_:   # argparse's own usage errors
        status = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    return status, err[-1]


def _schema_db(path):
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    return url


def _tables(url):
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("url,status,words", [
    pytest.param("chttp.db", 2, "is not a database URL", id="no-scheme"),
    pytest.param("oracle+nosuch://u@h/db", 2, "unknown database type", id="unknown-driver"),
    pytest.param("mysql://u@h/db", 2, "driver for 'mysql' is not installed", id="driver-missing"),
    pytest.param("sqlite:///{tmp}/no/such/dir/x.db", 2, "does not exist", id="missing-directory"),
    pytest.param("sqlite:///{tmp}/missing.db", 2, "no database at", id="missing-file"),
    pytest.param("sqlite:///{tmp}/notes.txt", 2, "is not a SQLite database", id="not-a-database"),
    pytest.param("sqlite:///{tmp}", 2, "is a directory", id="a-directory"),
    pytest.param("postgresql://nobody@127.0.0.1:{closed}/db", 1, "cannot connect to",
                 id="postgresql-unreachable"),
])
@pytest.mark.parametrize("command", [["db", "current"], ["purge"]], ids=["db-current", "purge"])
def test_a_bad_db_is_one_line_and_creates_nothing(capsys, tmp_path, url, status, words, command):
    (tmp_path / "notes.txt").write_text("not a database, a note\n" * 20)
    url = url.format(tmp=tmp_path, closed=free_port())
    before = sorted(p.name for p in tmp_path.iterdir())
    got, line = run(capsys, *command, "--db", url)
    assert (got, words in line, line.startswith("chttp-server: error: ")) == (status, True, True), line
    assert "(" in line and ")" in line   # the what-to-do part
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("command", [["db", "current"], ["purge"]], ids=["db-current", "purge"])
def test_a_database_without_the_schema_is_refused_and_left_alone(capsys, db_url, command):
    if db_url.startswith("sqlite"):
        engine = make_engine(db_url)   # an existing database of someone else's
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE notes (body TEXT)"))
        engine.dispose()
    status, line = run(capsys, *command, "--db", db_url)
    assert status == 1 and "has no chttp schema" in line and "db upgrade" in line
    assert not any(name.startswith("chttp_") for name in _tables(db_url))


def test_db_upgrade_refuses_a_foreign_chttp_messages_table(capsys, db_url):
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE chttp_messages (what TEXT)"))
    engine.dispose()
    status, line = run(capsys, "db", "upgrade", "--db", db_url)
    assert status == 1 and "already has chttp_messages" in line and "not made by" in line
    assert migrate.current_revision(db_url) is None


def test_db_upgrade_names_the_known_revisions(capsys, tmp_path):
    status, line = run(capsys, "db", "upgrade", "--db", f"sqlite:///{tmp_path}/x.db",
                       "--revision", "0009_future")
    assert status == 2 and "unknown revision '0009_future'" in line
    assert migrate.head_revision() in line
    assert list(tmp_path.iterdir()) == []


def test_db_upgrade_creates_and_db_current_reads(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/new.db"
    assert main(["db", "upgrade", "--db", url]) == 0
    assert main(["db", "current", "--db", url]) == 0
    assert capsys.readouterr().out.split() == ["chttp", "schema", "at", migrate.head_revision(),
                                                migrate.head_revision()]


def test_purge_batch_size_must_be_positive(capsys, tmp_path):
    status, line = run(capsys, "purge", "--db", _schema_db(tmp_path / "x.db"), "--batch-size", "0")
    assert status == 2 and "--batch-size" in line and "at least 1" in line


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan"])
def test_purge_pause_must_be_a_finite_duration(capsys, tmp_path, value):
    status, line = run(capsys, "purge", "--db", _schema_db(tmp_path / "x.db"), "--pause", value)
    assert status == 2 and "--pause" in line


def test_purge_with_a_pause_runs(capsys, tmp_path):
    assert main(["purge", "--db", _schema_db(tmp_path / "x.db"), "--pause", "0.01"]) == 0
    assert "purged 0 expired message(s)" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0", "-0.1", "1.5", "lots"])
def test_purge_share_must_be_a_fraction(capsys, tmp_path, value):
    status, line = run(capsys, "purge", "--db", _schema_db(tmp_path / "x.db"), "--share", value)
    assert status == 2 and "--share" in line


def test_purge_with_a_share_runs(capsys, tmp_path):
    assert main(["purge", "--db", _schema_db(tmp_path / "x.db"), "--share", "0.2"]) == 0
    assert "purged 0 expired message(s)" in capsys.readouterr().out


def test_serve_a_port_in_use(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, line = run(capsys, "serve", "--app", "tests.server.apps:Echo",
                           "--db", _schema_db(tmp_path / "x.db"), "--port", str(port))
    assert status == 1 and f"port {port} on 127.0.0.1 is already in use" in line


@pytest.mark.parametrize("host,words", [
    pytest.param("no-such-host.invalid", "cannot listen on host", id="unknown-name"),
    pytest.param("192.0.2.1", "not an address of this machine", id="not-ours"),
])
def test_serve_a_bad_host(capsys, tmp_path, host, words):
    status, line = run(capsys, "serve", "--app", "tests.server.apps:Echo",
                       "--db", _schema_db(tmp_path / "x.db"), "--host", host, "--port", "0")
    assert status == 2 and words in line


@pytest.mark.parametrize("database,words", [
    pytest.param("no_such_database", "does not exist", id="missing-database"),
    pytest.param("postgres?user=no_such_role", "does not exist", id="missing-role"),
])
def test_serve_refuses_a_wrong_postgresql_url_at_once(capsys, pg_cluster, database, words):
    """A store that is down is an outage (serve starts and answers 503:
    tests/server/test_outage.py); a wrong URL is a mistake no waiting fixes."""
    url = pg_cluster.url().rsplit("/", 1)[0] + "/" + database
    status, line = run(capsys, "serve", "--app", "tests.server.apps:Echo", "--db", url,
                       "--port", "0")
    assert status == 1 and words in line and line.startswith("chttp-server: error: "), line


def test_serve_without_upgrade_does_not_create_the_database(capsys, tmp_path):
    status, line = run(capsys, "serve", "--app", "tests.server.apps:Echo",
                       "--db", f"sqlite:///{tmp_path}/x.db", "--port", "0")
    assert status == 2 and "no database at" in line and list(tmp_path.iterdir()) == []


def test_serve_an_app_that_cannot_be_imported(capsys, tmp_path):
    status, line = run(capsys, "serve", "--app", "no_such_module_here:app",
                       "--db", _schema_db(tmp_path / "x.db"), "--port", "0")
    assert status == 2 and "cannot import 'no_such_module_here'" in line


def test_the_console_script_prints_no_traceback_unless_debug(tmp_path):
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/db"
    quiet = subprocess.run([sys.executable, "-m", "chttp_server.cli", "db", "current", "--db", url],
                           capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 1
    assert quiet.stderr.count("\n") == 1 and "Traceback" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "chttp_server.cli", "--debug", "db", "current",
                           "--db", url], capture_output=True, text=True, timeout=120)
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_building_the_parser_does_not_import_the_examples():
    code = ("import sys, chttp_server.cli as cli; cli.build_parser(); "
            "print([m for m in sys.modules if m.startswith('chttp_examples')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_demo_parses_its_own_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--kill-rate", "many"])
    assert exit_.value.code == 2
    assert "chttp-server demo: error: argument --kill-rate" in capsys.readouterr().err
    assert "demo" in build_parser().format_help()


def test_serve_on_a_database_without_the_schema_names_the_fix(capsys, tmp_path):
    path = tmp_path / "x.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE notes (body TEXT)"))
    engine.dispose()
    status, line = run(capsys, "serve", "--app", "tests.server.apps:Echo",
                       "--db", f"sqlite:///{path}", "--port", "0")
    assert status == 1 and "chttp-server db upgrade" in line
    assert not any(name.startswith("chttp_") for name in _tables(f"sqlite:///{path}"))


def test_the_demo_refuses_a_non_empty_db_dir_before_starting_anything(capsys, tmp_path):
    (tmp_path / "old.db").write_text("")
    status, line = run(capsys, "demo", "--transfers", "1", "--db-dir", str(tmp_path))
    assert status == 2 and "is not empty" in line
    assert [p.name for p in tmp_path.iterdir()] == ["old.db"]


def test_a_command_error_pickles_with_its_attributes():
    import pickle

    from chttp_core.commandline import EXIT_USAGE, CommandError

    error = pickle.loads(pickle.dumps(CommandError("no database at x", "check it", status=EXIT_USAGE)))
    assert (error.message, error.hint, error.status, str(error)) == (
        "no database at x", "check it", 2, "no database at x (check it)")
