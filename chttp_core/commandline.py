"""What ``chttp-server`` and ``chttp-client`` share: one-line errors and careful database opening.

A command-line user who mistypes a URL wants one line saying what is wrong and what to
do, not 120 lines of SQLAlchemy traceback; a developer chasing a bug wants the
traceback. So every command runs through :func:`run_command`: a :class:`CommandError`
(or a known database, schema or configuration error, translated here) prints as
``prog: error: <what> (<what to do>)`` and exits with

* **2** — a usage or configuration error: the command line names something that cannot
  work (a URL without a scheme, an unknown driver, a missing directory or database file,
  a file that is not a database, an unknown revision, a bad host, a module that cannot
  be imported);
* **1** — a runtime failure: the command line was fine but the world was not (the
  server does not answer, the schema is missing or behind, a port is taken, a table of
  ours that we did not create, an oplog that does not exist).

``--debug`` (either command, before or after the subcommand) shows the traceback instead.

Read-only commands must never create anything: :func:`open_database` with
``create=False`` refuses a SQLite file that does not exist *before* SQLite would create
it, and :func:`require_schema` refuses a database without the chttp tables instead of
letting a lazy ``upgrade`` make them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from importlib.resources import files
from typing import Callable

from sqlalchemy import Engine, inspect, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from chttp_core.db import make_engine, normalize_url
from chttp_core.errors import ChttpError, SchemaOutOfDateError, StoreURLError
from chttp_core.store_urls import check_store_url

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_BROKEN_PIPE",
    "EXTRAS",
    "missing_extra",
    "require_extra",
    "CommandError",
    "add_debug_option",
    "non_negative",
    "positive_int",
    "run_command",
    "open_database",
    "require_schema",
    "explain_database_error",
    "shown_url",
    "known_revisions",
]

#: The command line was fine, the world was not.
EXIT_FAILURE = 1
#: The command line (or the configuration it names) cannot work; argparse uses 2 too.
EXIT_USAGE = 2
#: The reader of our output went away (128 + SIGPIPE, as a shell reports it).
EXIT_BROKEN_PIPE = 141

#: Modules that come with an extra of ``setup.cfg``, and that extra.
EXTRAS = {
    "jinja2": "console", "flask": "flask", "flask_sqlalchemy": "flask", "django": "django",
    "psycopg2": "postgres", "opentelemetry": "otel", "starlette": "asgi", "uvicorn": "asgi",
    "aiosqlite": "asgi", "celery": "celery",
}

Handler = Callable[[argparse.Namespace], int]


class CommandError(ChttpError):
    """A failure a command reports in one line: what went wrong, and what to do about it."""

    def __init__(self, message: str, hint: str | None = None,
                 status: int = EXIT_FAILURE) -> None:
        super().__init__(message, hint, status)
        self.message = message
        self.hint = hint
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def missing_extra(error: ModuleNotFoundError, what: str = "this command") -> CommandError | None:
    """One line for a module of one of our extras that is not installed; else ``None``."""
    module = (error.name or "").split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return None
    return CommandError(f"{what} needs {module}, which is not installed",
                        f"it comes with the {extra!r} extra: pip install -e '.[{extra}]' "
                        "in the certified-http checkout", status=EXIT_USAGE)


def require_extra(module: str, what: str) -> None:
    """Import ``module`` now, or raise the one-line :func:`missing_extra` error for ``what``."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        failure = missing_extra(error, what)
        if failure is None:
            raise
        raise failure from None


def add_debug_option(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--debug`` on ``parser``; subcommands' copies never reset the top level's."""
    parser.add_argument("--debug", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="show tracebacks and debug logging instead of one-line errors")


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts that must be at least 1 (``--batch-size 0`` is 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative(unit: str) -> Callable[[str], float]:
    """An argparse ``type`` for a finite amount of ``unit`` that may be 0 (``-1`` is exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of {unit}, not {text!r}") from None
        if not 0 <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number of {unit} >= 0, not {text}")
        return value

    return parse


def run_command(prog: str, args: argparse.Namespace) -> int:
    """Run the handler ``args`` chose, turning known failures into one line on stderr."""
    debug = bool(getattr(args, "debug", False))
    if debug:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    handler: Handler = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()   # a closed pipe shows here, inside the handling below
        return status
    except BrokenPipeError:
        # `chttp-client show … | head`: the reader has gone, which is no error of ours.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        failure = _as_command_error(error, getattr(args, "db", None))
        if failure is None:
            raise   # not one we understand: the traceback is the most useful thing to show
        print(f"{prog}: error: {failure}", file=sys.stderr)
        return failure.status


def _as_command_error(error: Exception, url: str | None) -> CommandError | None:
    if isinstance(error, CommandError):
        return error
    if isinstance(error, ModuleNotFoundError):
        return missing_extra(error)
    if isinstance(error, SchemaOutOfDateError):
        return CommandError(str(error), status=EXIT_FAILURE)
    if isinstance(error, sa_exc.SQLAlchemyError) and url is not None:
        return explain_database_error(error, url)
    if isinstance(error, ChttpError):
        # A configuration mistake raised at construction time is also a ValueError.
        if isinstance(error, ValueError):
            return CommandError(f"{error}", status=EXIT_USAGE)
        return CommandError(f"{error}", "--debug shows the traceback")
    return None


# -- databases ---------------------------------------------------------------------------


def shown_url(url: str | URL) -> str:
    """``url`` as it is safe to print: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return str(url)


def open_database(url: str, *, create: bool = False) -> Engine:
    """An engine for ``url``, connected once to prove it works; never creates unless asked.

    ``create=False`` (every command but ``db upgrade`` and ``serve --upgrade``) refuses a
    SQLite file that does not exist, so a typo does not leave an empty database behind.
    """
    try:
        parsed = check_store_url(url, create=create, adapt=normalize_url)
    except StoreURLError as error:
        raise CommandError(error.message, error.hint, status=EXIT_USAGE) from None
    engine = make_engine(parsed)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except sa_exc.SQLAlchemyError as error:
        engine.dispose()
        raise explain_database_error(error, url) from error
    return engine


def explain_database_error(error: sa_exc.SQLAlchemyError, url: str) -> CommandError:
    """One line for a database error met while opening or reading ``url``."""
    where = shown_url(url)
    original = getattr(error, "orig", None)
    detail = " ".join(str(original if original is not None else error).split("\n")[0].split())
    if "file is not a database" in detail or "file is encrypted" in detail:
        return CommandError(f"{where} is not a SQLite database ({detail})",
                            "check the path: --db names the database file", status=EXIT_USAGE)
    if "unable to open database file" in detail:
        return CommandError(f"cannot open {where} ({detail})",
                            "check the path and its permissions", status=EXIT_USAGE)
    if "could not translate host name" in detail:
        return CommandError(f"cannot connect to {where}: {detail}",
                            "check the host name in the URL", status=EXIT_USAGE)
    if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError)) and not \
            where.startswith("sqlite"):
        return CommandError(f"cannot connect to {where}: {detail}",
                            "is the database server running, and the URL right?")
    return CommandError(f"database error on {where}: {detail}", "--debug shows the traceback")


def require_schema(engine: Engine, url: str) -> None:
    """Refuse a database without the chttp tables, or with them at another revision."""
    from chttp_core import migrate  # Alembic loads only when a command needs it

    current = migrate.current_revision(engine)
    if current is None:
        raise CommandError(
            f"{shown_url(url)} has no chttp schema",
            f"is --db the right database? `chttp-server db upgrade --db {shown_url(url)}` "
            "creates it")
    head = migrate.head_revision()
    if current != head:
        raise SchemaOutOfDateError(current=current, head=head,
                                   command=f"chttp-server db upgrade --db {shown_url(url)}")


def known_revisions() -> list[str]:
    """The revision ids this code ships, oldest first (file names of the versions folder)."""
    versions = files("chttp_core.migrations").joinpath("versions")
    return sorted(entry.name[:-3] for entry in versions.iterdir()
                  if entry.name.endswith(".py") and not entry.name.startswith("_"))


def foreign_tables(engine: Engine) -> list[str]:
    """``chttp_`` tables in a database that has no chttp version table: someone else's."""
    from chttp_core import migrate

    if migrate.current_revision(engine) is not None:
        return []
    names: list[str] = inspect(engine).get_table_names()
    return sorted(name for name in names if name.startswith("chttp_"))

