"""One check of store URLs at every entry point (chttp_core.store_urls, issue 25 item 4).

Each entry point that takes a URL — the WSGI and ASGI middleware, Flask's ``Certified``,
``Journal`` (which Django's ``CHTTP["JOURNAL"]`` URL goes through) and both command
lines — refuses the same mistakes the same way: a :class:`StoreURLError` (a
``ChttpError``) naming the mistake and its fix, never a raw SQLAlchemy or driver error,
and nothing left on disk.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import create_engine

from chttp_core import migrate
from chttp_core.errors import ChttpError, StoreURLError


def _wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b""]


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    pass


def _wsgi(url: str, **options: Any) -> Any:
    from chttp_server import CertifiedMiddleware

    return CertifiedMiddleware(_wsgi_app, db_url=url, **options)


def _asgi(url: str, **options: Any) -> Any:
    from chttp_server.asgi import CertifiedMiddleware

    return CertifiedMiddleware(_asgi_app, db_url=url, **options)


def _flask(url: str, **options: Any) -> Any:
    from flask import Flask

    from chttp_server.flask import Certified

    return Certified(Flask(__name__), db_url=url, **options)


def _journal(url: str, **options: Any) -> Any:
    from chttp_client import Journal

    journal = Journal(url, **options)
    journal.ensure_schema()
    return journal


ENTRY_POINTS: list[Any] = [
    pytest.param(_wsgi, id="wsgi-middleware"),
    pytest.param(_asgi, id="asgi-middleware"),
    pytest.param(_flask, id="flask"),
    pytest.param(_journal, id="journal"),
]

MISTAKES = [
    pytest.param("sqllite:///x.db", ["unknown database type 'sqllite'", "did you mean sqlite:///x.db",
                                     "installed here: sqlite"], id="misspelled-scheme"),
    pytest.param("postgress://u@h/db", ["'postgress'", "did you mean postgresql://u@h/db"],
                 id="misspelled-postgresql"),
    pytest.param("sqlite://name.db", ["names no file", "did you mean sqlite:///name.db"],
                 id="two-slashes"),
    pytest.param("sqlite:///nodir/s.db", ["directory", "nodir does not exist"],
                 id="missing-directory"),
    pytest.param("orders.db", ["is not a database URL", "sqlite:///path/to/file.db"],
                 id="no-scheme"),
]


@pytest.mark.parametrize("url,words", MISTAKES)
@pytest.mark.parametrize("make", ENTRY_POINTS)
def test_a_bad_url_is_one_chttp_error_and_leaves_nothing(make: Callable[..., Any], url: str,
                                                         words: list[str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreURLError) as raised:
        make(url, upgrade_schema=True)    # even where creating is allowed
    assert isinstance(raised.value, ChttpError) and isinstance(raised.value, ValueError)
    for word in words:
        assert word in str(raised.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make", ENTRY_POINTS)
def test_a_missing_sqlite_file_is_refused_and_never_created(make: Callable[..., Any],
                                                            tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing.db'}"
    with pytest.raises(StoreURLError) as raised:
        make(url, upgrade_schema=False)
    assert f"no database at {tmp_path / 'missing.db'}" in str(raised.value)
    assert "upgrade_schema=True" in str(raised.value) and "chttp-server db upgrade" in str(raised.value)
    assert raised.value.path == str(tmp_path / "missing.db")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make", ENTRY_POINTS)
def test_upgrade_schema_still_creates_a_new_sqlite_store(make: Callable[..., Any],
                                                         tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    made = make(url, upgrade_schema=True)
    if hasattr(made, "close"):
        made.close()
    if make is _asgi:
        import asyncio

        asyncio.run(made.prepare())
        asyncio.run(made.engine.dispose())
    else:
        engine = getattr(made, "engine", None)
        if engine is not None:
            engine.dispose()
    assert migrate.current_revision(url) == migrate.head_revision()


def test_journal_upgrades_by_default_so_a_new_journal_file_still_works(tmp_path: Path) -> None:
    from chttp_client import Journal

    journal = Journal(f"sqlite:///{tmp_path / 'sender.db'}")
    journal.ensure_schema()
    journal.close()
    assert (tmp_path / "sender.db").exists()


def test_an_engine_on_a_missing_sqlite_file_is_refused_without_upgrade(tmp_path: Path) -> None:
    from chttp_server import CertifiedMiddleware

    engine = create_engine(f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(StoreURLError, match="no database at"):
        CertifiedMiddleware(_wsgi_app, engine=engine)
    assert list(tmp_path.iterdir()) == []
    engine.dispose()


def test_a_file_that_is_not_a_database_is_no_raw_driver_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a note, not a database\n" * 40)
    with pytest.raises(ChttpError):
        _wsgi(f"sqlite:///{tmp_path / 'notes.txt'}")


def test_store_url_errors_pickle_with_their_attributes() -> None:
    error = StoreURLError("no database at /x.db", "check the path", url="sqlite:///x.db",
                          path="/x.db")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.hint, copy.url, copy.path, str(copy)) == (
        error.message, error.hint, error.url, error.path, str(error))


@pytest.mark.parametrize("command", [
    pytest.param(["chttp_server.cli", "db", "current"], id="chttp-server"),
    pytest.param(["chttp_client.cli", "list"], id="chttp-client"),
])
@pytest.mark.parametrize("url,words", MISTAKES[:3])
def test_both_command_lines_give_the_same_check(command: list[str], url: str, words: list[str],
                                                tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", *command, "--db", url], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"chttp-{command[0].split('_')[1].split('.')[0]}: error: ")
    for word in words:
        assert word in line
    assert list(tmp_path.iterdir()) == []


def test_an_existing_empty_sqlite_file_is_not_a_missing_one(tmp_path: Path) -> None:
    """A database without the schema is the schema check's refusal, as before."""
    from chttp_core.errors import SchemaOutOfDateError

    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(SchemaOutOfDateError):
        _wsgi(f"sqlite:///{tmp_path / 'empty.db'}")


def test_a_flask_instance_folder_store_is_suggested(tmp_path: Path) -> None:
    """`sqlite:///orders.db` in Flask-SQLAlchemy is instance/orders.db: the command line
    names that file instead of offering to create a second, empty store."""
    (tmp_path / "instance").mkdir()
    sqlite3.connect(tmp_path / "instance" / "orders.db").close()
    result = subprocess.run([sys.executable, "-m", "chttp_server.cli", "db", "current", "--db",
                             "sqlite:///orders.db"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert f"did you mean sqlite:///{tmp_path / 'instance' / 'orders.db'}?" in result.stderr
    assert "db upgrade" not in result.stderr and not (tmp_path / "orders.db").exists()
