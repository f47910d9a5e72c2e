"""One check of a store's database URL, for every entry point that takes one.

``CertifiedMiddleware`` (WSGI and ASGI), Flask's ``Certified``, Django's ``CHTTP``
journal setting, ``Journal`` and both command lines all open stores from a URL a person
typed. Left to SQLAlchemy, a typo surfaces as ``NoSuchModuleError`` (``sqllite://``),
as ``sqlite3.OperationalError`` on the first request (a directory that does not exist),
or not at all: ``sqlite://name.db`` is an *in-memory* database (the name is read as a
host) and ``sqlite:///missing.db`` quietly creates an empty file that then fails the
schema check, and stays behind. :func:`check_store_url` turns each of these into a
:class:`~chttp_core.errors.StoreURLError` naming the mistake and its fix, before
anything is created.

The rule for SQLite files: a missing file is created only when the caller asked to
create or upgrade the schema (``upgrade_schema=True``, ``db upgrade``, ``serve
--upgrade``; a ``Journal`` upgrades by default). Otherwise it is refused with the
command line's text, and nothing is made. A missing *directory* is always refused:
nobody asked for directories to be made. The checks read the file system only; a
database server that does not answer is the store being down (503 and retries,
docs/protocol.rst §4), never a configuration error.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from typing import Callable

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from chttp_core.errors import StoreURLError

__all__ = ["CREATE_HINT", "check_store_url", "check_sqlite_file", "sqlite_path", "installed_drivers"]

#: The backends a chttp store runs on, and the driver modules that reach them.
_DRIVERS: dict[str, tuple[tuple[str, str], ...]] = {
    "sqlite": (("sqlite", "sqlite3"), ("sqlite+aiosqlite", "aiosqlite")),
    "postgresql": (("postgresql", "psycopg2"), ("postgresql+psycopg", "psycopg"),
                   ("postgresql+asyncpg", "asyncpg")),
}

#: How an API entry point (a middleware, a Journal) creates a missing SQLite store.
CREATE_HINT = ("pass upgrade_schema=True to create it, or run "
               "`chttp-server db upgrade --db {url}` once")

_EXAMPLES = "sqlite:///path/to/file.db or postgresql://user@host/dbname"


def installed_drivers() -> list[str]:
    """The URL schemes a chttp store can use with the drivers installed here."""
    return [scheme for choices in _DRIVERS.values() for scheme, module in choices
            if importlib.util.find_spec(module) is not None]


def _shown(url: str | URL) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return str(url)


def check_store_url(
    url: str | URL,
    *,
    create: bool,
    adapt: Callable[[URL], URL] | None = None,
    create_hint: str | None = None,
) -> URL:
    """``url`` parsed, its driver importable and its SQLite file usable, or :class:`StoreURLError`.

    ``create``: may a missing SQLite file be created (see the module docstring)?
    ``adapt`` turns the URL as written into the one the engine will use (psycopg2 for
    a bare ``postgresql://``; an asyncio driver for the ASGI front end) before its driver
    is checked. ``create_hint`` says how this entry point creates a missing database
    (``{url}`` stands for the URL).
    """
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise StoreURLError(f"{str(url)!r} is not a database URL", f"write {_EXAMPLES}",
                            url=str(url)) from None
    _check_scheme(parsed)
    if adapt is not None:
        parsed = adapt(parsed)
    _check_driver(parsed)
    check_sqlite_file(parsed, create=create, create_hint=create_hint, shown=_shown(url))
    return parsed


def _check_scheme(parsed: URL) -> None:
    """A misspelled backend names the ones installed; ``sqlite://name.db`` its fix."""
    try:
        parsed.get_dialect()
    except sa_exc.NoSuchModuleError:
        backend = parsed.drivername.split("+", 1)[0]
        close = difflib.get_close_matches(backend, list(_DRIVERS), n=1, cutoff=0.6)
        guess = ""
        if close:
            fixed = parsed.set(drivername=parsed.drivername.replace(backend, close[0], 1))
            guess = f"did you mean {_shown(fixed)}? "
        raise StoreURLError(
            f"unknown database type {parsed.drivername!r} in {_shown(parsed)}",
            f"{guess}chttp stores messages in sqlite:/// or postgresql:// databases; "
            f"installed here: {', '.join(installed_drivers()) or 'none'}",
            url=_shown(parsed)) from None
    if parsed.get_backend_name() == "sqlite" and parsed.host:
        # sqlite://name.db: the name is the URL's host, the database is in memory.
        name = parsed.host + (f"/{parsed.database}" if parsed.database else "")
        raise StoreURLError(
            f"{_shown(parsed)} names no file: with two slashes {parsed.host!r} is read as a "
            "host and the database would live in memory",
            f"did you mean {parsed.drivername}:///{name}? Three slashes and a relative "
            f"path, four for an absolute one: {parsed.drivername}:////abs/path/{name}",
            url=_shown(parsed))


def _check_driver(parsed: URL) -> None:
    try:
        parsed.get_dialect().import_dbapi()
    except sa_exc.NoSuchModuleError:  # pragma: no cover - _check_scheme caught it
        raise StoreURLError(f"unknown database type {parsed.drivername!r} in {_shown(parsed)}",
                            f"write {_EXAMPLES}", url=_shown(parsed)) from None
    except ImportError as missing:
        raise StoreURLError(
            f"the driver for {parsed.drivername!r} is not installed: {missing}",
            "chttp stores messages in sqlite:/// or postgresql:// (psycopg2) databases; "
            f"installed here: {', '.join(installed_drivers()) or 'none'}",
            url=_shown(parsed)) from None


def sqlite_path(parsed: URL) -> str | None:
    """The absolute file of a SQLite URL; ``None`` for an in-memory database or a URI."""
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        return None
    if database.startswith("file:"):
        return None   # a SQLite URI: its owner knows what it does
    return os.path.abspath(database)


#: Drivers that open plain SQLite files (not SQLCipher's encrypted ones).
_SQLITE_FILE_DRIVERS = ("pysqlite", "aiosqlite")
_SQLITE_HEADER = b"SQLite format 3\x00"


def _looks_like_sqlite(path: str) -> bool:
    """True for a missing or empty file (SQLite makes one) or one with SQLite's header."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return True
    except OSError:
        return True   # unreadable: SQLite's own error says why, as "unable to open"
    return head in (b"", _SQLITE_HEADER)


def check_sqlite_file(parsed: URL, *, create: bool, create_hint: str | None = None,
                      shown: str | None = None) -> None:
    """Refuse a SQLite URL whose directory is missing, or whose file is missing unless
    ``create``; ``shown`` is the URL as the user wrote it (default: ``parsed``)."""
    path = sqlite_path(parsed)
    if path is None:
        return
    shown = shown or _shown(parsed)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise StoreURLError(f"directory {directory} does not exist",
                            "create it, or fix the path in the URL", url=shown, path=path)
    if os.path.isdir(path):
        raise StoreURLError(f"{path} is a directory, not a database file",
                            "name a file: sqlite:///path/to/file.db", url=shown, path=path)
    if parsed.get_driver_name() in _SQLITE_FILE_DRIVERS and not _looks_like_sqlite(path):
        raise StoreURLError(f"{path} is not a SQLite database (it does not start with "
                            "SQLite's header)", "check the path: the URL names the database file",
                            url=shown, path=path)
    if not create and not os.path.exists(path):
        how = (create_hint or "`chttp-server db upgrade --db {url}` creates one").format(url=shown)
        flask = os.path.join(directory, "instance", os.path.basename(path))
        if os.path.isfile(flask):
            # Flask-SQLAlchemy keeps a relative SQLite path in the app's instance folder:
            # creating the file named here would make a second, empty store.
            how = (f"Flask-SQLAlchemy keeps relative SQLite paths in the app's instance "
                   f"folder: did you mean {parsed.drivername}:///{flask}?")
        raise StoreURLError(f"no database at {path}", f"check the path; {how}",
                            url=shown, path=path)
