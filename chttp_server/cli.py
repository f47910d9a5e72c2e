"""``chttp-server``: the receiver's command line.

::

    chttp-server db upgrade --db URL [--revision R]   create the chttp tables or bring them to head
    chttp-server db current --db URL      print the revision the database is at
    chttp-server purge --db URL           delete expired messages in bounded batches
    chttp-server serve --app module:attr [--db URL] [--host H] [--port N] [--threads N] [--upgrade]
                       [--connection-limit N] [--channel-timeout S] [--request-timeout S]
                       [--max-request-body BYTES] [--max-request-header BYTES]
    chttp-server demo [--transfers N] [--kill-rate R] [--seed S] [--db-dir DIR] [--postgres]
                      [--asgi]
    chttp-server console [--db URL] [--journal URL] [--host H [--allowed-host NAME]] [--port N]
                         [--allow-actions --token T]
    chttp-server messages list --db URL [--limit N] [--json]    received messages, one per line
    chttp-server messages show --db URL ID [--scope S] [--json] one message and its response

``serve`` runs the application under waitress, wrapped in :class:`CertifiedMiddleware`.
``--app`` names a plain WSGI application *or* a :class:`~chttp_server.Resource` (an
instance, or a subclass that takes no arguments, which is instantiated); either way the
middleware is applied here, once, so the module stays free of deployment settings such
as the database URL. An application that is already certified (a ``CertifiedMiddleware``,
a Flask app with ``Certified``, a Django project with the middleware:
:mod:`chttp_server.certified_apps`) is served as it is, on its own store, with a line on
stderr saying so: a second middleware would answer 500 to every certified request. Like ``gunicorn``, the current directory is
put on ``sys.path`` so ``--app myservice:app`` finds ``./myservice.py``.

Only ``db upgrade`` and ``serve --upgrade`` create anything: every other command refuses a
missing SQLite file or a database without the chttp tables. Mistakes are one line on
stderr, exit status 2 for the command line or configuration, 1 for a runtime failure
(:mod:`chttp_core.commandline`); ``--debug`` shows the traceback instead.

The demo lives in ``chttp_examples``, which the library never imports: its options are
parsed by the demo itself when it runs, so ``chttp-server --help`` stays fast and the
receiver works without the examples installed.

Each subcommand is one ``_cmd_<name>`` function registered with ``set_defaults``, so a
new subcommand is a parser block and a function, nothing more; the two with many
options keep them, and their handler, in a module of their own
(:mod:`chttp_server.serve_command`, :mod:`chttp_server.purge_command`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from chttp_core.commandline import (
    EXIT_USAGE,
    CommandError,
    add_debug_option,
    known_revisions,
    open_database,
    run_command,
    shown_url,
)
from chttp_core.errors import ForeignSchemaError
from chttp_server import purge_command, serve_command
from chttp_server.serve_command import load_app

__all__ = ["main", "build_parser", "load_app"]

PROG = "chttp-server"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Certified HTTP receiver")
    add_debug_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_db(commands)
    _add_purge(commands)
    _add_serve(commands)
    _add_demo(commands)
    _add_console(commands)
    _add_messages(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        args.demo_args = [arg for arg in rest if arg != "--debug"]  # the demo parses them
        args.debug = args.debug or "--debug" in rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return run_command(PROG, args)


def _add_db_option(parser: argparse.ArgumentParser, help: str = "database URL") -> None:
    parser.add_argument("--db", required=True, metavar="URL",
                        help=f"{help}: sqlite:///path/file.db or postgresql://user@host/db")
    add_debug_option(parser)


# -- db ------------------------------------------------------------------------------


def _add_db(commands: Any) -> None:
    db = commands.add_parser("db", help="schema migrations of the chttp tables")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser(
        "upgrade", help="create the chttp tables, or bring them to the newest revision")
    _add_db_option(upgrade)
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    upgrade.set_defaults(handler=_cmd_db_upgrade)
    current = db_commands.add_parser("current", help="print the current revision")
    _add_db_option(current)
    current.set_defaults(handler=_cmd_db_current)


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from chttp_core import migrate

    revisions = known_revisions()
    if args.revision not in ("head", "heads", *revisions):
        raise CommandError(f"unknown revision {args.revision!r}",
                           f"this code knows head, {', '.join(revisions)}", status=EXIT_USAGE)
    engine = open_database(args.db, create=True)
    try:
        try:
            migrate.upgrade(engine, args.revision)
        except ForeignSchemaError as error:
            raise CommandError(f"{shown_url(args.db)}: {error}",
                               "use another database, or rename or drop those tables") from None
        print(f"chttp schema at {migrate.current_revision(engine)}")
    finally:
        engine.dispose()
    return 0


def _cmd_db_current(args: argparse.Namespace) -> int:
    from chttp_core import migrate

    engine = open_database(args.db)
    try:
        revision = migrate.current_revision(engine)
    finally:
        engine.dispose()
    if revision is None:
        raise CommandError(f"{shown_url(args.db)} has no chttp schema",
                           f"`chttp-server db upgrade --db {shown_url(args.db)}` creates it")
    print(revision)
    return 0


# -- purge ---------------------------------------------------------------------------


def _add_purge(commands: Any) -> None:
    purge = commands.add_parser("purge", help="delete expired messages")
    _add_db_option(purge)
    purge_command.add_arguments(purge)   # its pacing options, and its handler


# -- serve ---------------------------------------------------------------------------


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="serve a WSGI application or Resource, certified, with waitress"
    )
    serve_command.add_arguments(serve)   # its options, and its handler


# -- demo ------------------------------------------------------------------------------


def _add_demo(commands: Any) -> None:
    # No options here: they belong to the demo (chttp_examples), parsed when it runs,
    # so building this parser imports nothing from the examples.
    demo = commands.add_parser(
        "demo", add_help=False,
        help="the escrow under chaos: kill processes at random, then audit every coin "
             "(chttp-server demo --help lists its options)")
    demo.set_defaults(handler=_cmd_demo, demo_args=[])


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from chttp_examples.escrow import cli as demo_cli
    except ModuleNotFoundError as missing:
        raise CommandError(f"the demo is not installed ({missing})",
                           "install certified-http with its examples: pip install -e . in "
                           "the checkout"
                           ) from None
    parser = argparse.ArgumentParser(
        prog=f"{PROG} demo",
        description="The escrow under chaos: kill processes at random, then audit every coin.")
    demo_cli.add_arguments(parser)
    status: int = demo_cli.run(parser.parse_args(args.demo_args))
    return status


# -- console ---------------------------------------------------------------------------


def _add_console(commands: Any) -> None:
    from chttp_server.console import cli as console_cli  # options only; pages load on run

    console = commands.add_parser(
        "console", help="a web console over a receiver's messages and a sender's oplogs")
    console_cli.add_arguments(console)
    console.set_defaults(handler=console_cli.run)


# -- messages --------------------------------------------------------------------------


def _add_messages(commands: Any) -> None:
    from chttp_server.console import messages_command  # the console's queries, as lines

    messages_command.add_arguments(commands)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
