"""Setting up the Django integration: refusals at start-up, the user's scope, the settings.

Every scenario runs in a subprocess (tests/examples/django_check.py), because Django's
settings are global to a process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.examples.django_live import django_env
from tests.server.live import REPO_ROOT


def check(scenario: str, directory: Path, db_url: str | None = None) -> Any:
    env = django_env(db_url or f"sqlite:///{directory / 'check.db'}", directory)
    env.pop("DJANGO_SETTINGS_MODULE")
    done = subprocess.run([sys.executable, "-m", "tests.examples.django_check", scenario,
                           str(directory)], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, str | None]:
    return check("refusals", tmp_path_factory.mktemp("refusals"))


@pytest.mark.parametrize(("case", "fix"), [
    ("not migrated", "run `python manage.py migrate`"),
    ("app not installed", "add 'chttp_server.django' to INSTALLED_APPS"),
    ("unknown alias", "'orders', which is not in settings.DATABASES"),
    ("mysql", "runs on SQLite (django.db.backends.sqlite3) or PostgreSQL"),
    ("autocommit off", "remove the AUTOCOMMIT key"),
    ("serializable", "must be READ COMMITTED"),
    ("authentication after", "Move chttp_server.django.CertifiedMiddleware after it"),
    ("listed twice", "listed more than once in MIDDLEWARE"),
    ("unknown key", "unknown keys ['RETENTON']"),
    ("bad retention", "RETENTION"),
    ("bad prepared statements", "['PREPARED_STATEMENTS'] must be True or False"),
    ("misspelt journal URL", "CHTTP['JOURNAL']: unknown database type 'sqllite'"),
    ("journal in a missing directory", "CHTTP['JOURNAL']: directory "),
])
def test_a_configuration_that_cannot_give_the_guarantee_is_refused_at_start_up(refusals, case, fix):
    assert refusals[case] is not None, f"{case}: the application started"
    assert fix in refusals[case]


def test_a_sound_configuration_starts(refusals):
    assert refusals["migrated"] is None
    assert refusals["authentication after, own scope"] is None


def test_the_thread_guard_outlives_a_projects_own_execute_wrapper_block(tmp_path):
    """The guard against queries from other threads (chttp_server/django/threads.py) is
    added when a connection opens; one opened inside ``connection.execute_wrapper(w)``
    must keep it, and lose ``w``, when the block ends."""
    answers = check("wrappers", tmp_path)
    assert answers == {"wrappers after": ["_refuse_foreign_threads"], "seen": 1}


def test_each_user_has_an_id_space_of_their_own(tmp_path):
    answers = check("scope", tmp_path)
    assert answers["alice"][0] == {"status": 201, "replayed": None}
    assert answers["bob"] == [{"status": 201, "replayed": None}]  # not alice's answer
    assert answers["anonymous"] == [{"status": 201, "replayed": None}]
    assert answers["alice"][1] == {"status": 201, "replayed": "true"}
    nested = answers["inside a transaction"]
    assert nested["statuses"] == [201, 201, 500]
    assert nested["replayed"] == "true"
    assert nested["doomed"] == 0  # the exploding view's savepoint was rolled back
    assert nested["usable"] is True


def test_another_alias_require_id_message_prefix_and_idempotency_key(tmp_path):
    answers = check("policies", tmp_path)
    assert answers["default tables"] == []  # migrate creates them on CHTTP["DATABASE"] only
    assert "chttp_messages" in answers["messages tables"]
    assert answers["missing"] == [400, "message-id-required"]
    assert answers["keyed"] == [201, {"ran": "k-1"}, "/m/k-1"]
    assert answers["listed"] == 200  # a GET needs no id
    assert answers["replayed"] == [201, "true"]
    assert answers["stored"] == [["k-1"]]


@pytest.mark.slow
def test_migrate_and_chttp_purge_run_from_the_installed_wheel(tmp_path, built_wheel):
    import os
    import zipfile

    names = set(zipfile.ZipFile(built_wheel).namelist())
    for name in ("chttp_server/django/migrations/0001_initial.py",
                 "chttp_server/django/management/commands/chttp_purge.py",
                 "chttp_examples/django_orders/orders/migrations/0001_initial.py",
                 "chttp_examples/django_orders/orders/management/commands/serve.py"):
        assert name in names
    target = tmp_path / "installed"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet",
         "--target", str(target), str(built_wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {**os.environ, "PYTHONPATH": str(target),
           "CHTTP_ORDERS_DB": f"sqlite:///{tmp_path / 'wheel.db'}"}
    env.pop("DJANGO_SETTINGS_MODULE", None)

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chttp_examples.django_orders", *args],
                              capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300, check=False)

    migrated = manage("migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "Applying chttp.0001_initial... OK" in migrated.stdout
    purged = manage("chttp_purge")
    assert purged.returncode == 0, purged.stderr
    assert "deleted 0 expired message(s)" in purged.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import chttp_server.django as m; print(m.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr


def test_the_store_keeps_one_record_per_django_connection_and_prepares_on_it(pg_url, tmp_path):
    """The pool record wrapping Django's connection lives as long as that connection.

    Its ``info`` outlives a checkout and is gone once Django reopens the connection;
    requests keep their guarantee across the reconnect. ``PREPARED_STATEMENTS`` prepares
    the claim and the stored response on the connection's session where the store's
    ``store_dbapi.prepares`` accepts the pool (it checks the pool's promise that its
    records live as long as their connections), and prepares nothing otherwise.
    """
    answers = check("connection", tmp_path, pg_url)
    assert answers["record kept"] is True
    assert answers["record after close"] is None
    assert answers["answers"] == [[201, None], [201, None], [201, "true"], [201, None]]
    assert answers["another client"] == 201
    assert answers["after reconnect"] == [[201, None], [201, "true"], [201, "true"]]
    lost = answers["lost elsewhere"]
    assert lost["other before"] == [201, None]
    assert lost["here"] == [503, [201, None]]  # t-3 did not run, then ran on a new session
    assert lost["other after"] == [201, None]  # the other thread's session went on
    assert answers["orders"] == 5 + 4  # c-1 .. c-5 and t-1 .. t-4, each once
    commit = answers["commit"]
    assert commit["outermost"] == [201, None] and commit["stored"] == 1
    assert commit["hooks"] == ["committed"]  # Django's on_commit hook ran, once
    assert commit["nested"] == [201, None]
    assert commit["nested stored"] == 0 and commit["nested orders"] == 0  # rolled back with the caller's
    assert commit["notices"] == []  # no second COMMIT reached the server
    # Statement names end in a digest of their text (chttp_server.store_dbapi).
    expected = ["chttp_claim", "chttp_complete"] if answers["prepares"] else []
    for prepared in (answers["prepared"], answers["prepared after reconnect"]):
        assert [name.rsplit("_", 1)[0] for name in prepared] == expected
