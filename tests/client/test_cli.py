"""``chttp-client`` never creates a journal, and says what is wrong in one line.

Real SQLite files and the session's real PostgreSQL; an unreachable PostgreSQL is a
closed loopback port. Exit status 2 for the command line (a missing file, a module that
cannot be imported), 1 for the world (no schema, no such oplog, a refused resume).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import inspect, text

from chttp_client import Journal, resumable
from chttp_client.cli import main
from chttp_core.db import make_engine
from chttp_server.testing import free_port
from tests.server.live import REPO_ROOT

COMMANDS = [
    pytest.param(["list"], id="list"),
    pytest.param(["list", "--all"], id="list-all"),
    pytest.param(["show", "0f0f"], id="show"),
    pytest.param(["purge", "--older-than-days", "1"], id="purge"),
    pytest.param(["resume"], id="resume"),
]


class Stop(BaseException):
    """Leaves an oplog open, as a crash would (not an Exception: never recorded)."""


def run(capsys, *argv):
    status = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return status, err[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_sqlite_file_is_not_created(capsys, tmp_path, command):
    status, line = run(capsys, *command, "--db", f"sqlite:///{tmp_path}/missing.db")
    assert status == 2 and line.startswith("chttp-client: error: no database at")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_a_database_without_the_schema_gets_no_tables(capsys, db_url, command):
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE notes (body TEXT)"))
    status, line = run(capsys, *command, "--db", db_url)
    assert status == 1 and "has no chttp schema" in line and "chttp-server db upgrade" in line
    assert set(inspect(engine).get_table_names()) == {"notes"}
    engine.dispose()


def test_an_unreachable_postgresql(capsys):
    status, line = run(capsys, "list", "--db", f"postgresql://nobody@127.0.0.1:{free_port()}/db")
    assert status == 1 and "cannot connect to" in line and "Connection refused" in line


def test_show_an_unknown_oplog(capsys, db_url):
    Journal(db_url).ensure_schema()
    status, line = run(capsys, "show", "--db", db_url, "no-such-oplog")
    assert status == 1 and "no oplog 'no-such-oplog'" in line and "list --all" in line


def test_resume_an_unimportable_module(capsys, db_url):
    Journal(db_url).ensure_schema()
    status, line = run(capsys, "resume", "--db", db_url, "--import", "no_such_module_here")
    assert status == 2 and "cannot import 'no_such_module_here'" in line


def test_resume_names_the_module_to_import_for_an_unregistered_function(db_url):
    with Journal(db_url, lease=timedelta(0)) as journal:
        @resumable(journal, name="tests.nowhere.stopped")
        def stopped(*, chttp_context):
            chttp_context.persist(7)
            chttp_context.checkpoint()     # the oplog exists now
            raise Stop()

        with pytest.raises(Stop):
            stopped()
        [oplog] = journal.list_open()
    # A fresh process: nothing registered the function there.
    resumed = subprocess.run([sys.executable, "-m", "chttp_client.cli", "resume", "--db", db_url],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    # The --import hint comes first, not the version talk of a function never imported.
    assert (f"{oplog.id}  tests.nowhere.stopped v1  refused  no @resumable tests.nowhere.stopped "
            "was registered: pass --import tests.nowhere") in resumed.stdout
    assert "registered versions" not in resumed.stdout
    assert resumed.stdout.strip().endswith("1 open oplog(s): 1 refused")
    assert "Traceback" not in resumed.stderr


def test_a_function_in_a_script_is_journaled_under_a_name_that_resumes(tmp_path):
    script = tmp_path / "myjob.py"
    script.write_text(
        "from chttp_client import Journal, resumable\n"
        "journal = Journal('sqlite:///' + __file__ + '.db')\n"
        "@resumable(journal)\n"
        "def job(*, chttp_context):\n"
        "    return chttp_context.persist(41) + 1\n"
        "if __name__ == '__main__':\n"
        "    print(job.chttp_name, job())\n")
    ran = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert ran.stdout.split() == ["myjob.job", "42"], ran.stderr


def test_a_function_in_main_without_an_importable_name_is_refused_up_front():
    code = ("from chttp_client import Journal, resumable\n"
            "@resumable(Journal('sqlite://'))\n"
            "def job(*, chttp_context): pass\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1
    assert "ValueError" in ran.stderr and "name='yourmodule.job'" in ran.stderr


def test_abandon_dead_letters_an_open_oplog_and_show_says_why(capsys, db_url):
    with Journal(db_url, lease=timedelta(0)) as journal:
        @resumable(journal, name="tests.cli.abandoned")
        def stopped(*, chttp_context):
            chttp_context.persist(7)
            chttp_context.checkpoint()
            raise Stop()

        with pytest.raises(Stop):
            stopped()
        [oplog] = journal.list_open()
    assert main(["abandon", "--db", db_url, oplog.id, "--reason", "code changed"]) == 0
    assert f"oplog {oplog.id} abandoned: code changed" in capsys.readouterr().out
    assert main(["list", "--db", db_url]) == 0
    assert oplog.id not in capsys.readouterr().out          # no longer open
    assert main(["show", "--db", db_url, oplog.id]) == 0
    shown = capsys.readouterr().out
    assert "state     abandoned" in shown and "abandoned code changed" in shown
    # A second abandon: the oplog is not open any more, one line and exit 1.
    status, line = run(capsys, "abandon", "--db", db_url, oplog.id, "--reason", "again")
    assert status == 1 and "not open" in line


def test_resume_reports_an_oplog_it_abandons_and_exits_1(db_url, tmp_path):
    """A function whose code changed since the crash: resume dead-letters it, says so."""
    module = tmp_path / "changing.py"
    module.write_text(
        "from chttp_client import Journal, resumable\n"
        f"journal = Journal({db_url!r})\n"
        "@resumable(journal, name='changing.job')\n"
        "def job(*, chttp_context):\n"
        "    chttp_context.persist(SOURCE, 1)\n"
        "    chttp_context.checkpoint()\n"
        "    raise SystemExit(3)\n"
        "SOURCE = abs\n")
    run_first = subprocess.run([sys.executable, "-c", "import changing; changing.job()"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run_first.returncode == 3, run_first.stderr
    module.write_text(module.read_text().replace("SOURCE = abs", "SOURCE = float"))
    resumed = subprocess.run([sys.executable, "-m", "chttp_client.cli", "resume", "--db", db_url,
                              "--import", "changing"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{REPO_ROOT}"})
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert "changing.job v1  abandoned" in resumed.stdout
    assert resumed.stdout.strip().endswith("1 open oplog(s): 1 abandoned")
    assert "1 abandoned (never resumed again)" in resumed.stderr
