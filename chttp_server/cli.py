"""``chttp-server``: the receiver's command line.

::

    chttp-server db upgrade --db URL [--revision R]   create the chttp tables or bring them to head
    chttp-server db current --db URL      print the revision the database is at
    chttp-server purge --db URL           delete expired messages in bounded batches
    chttp-server serve --app module:attr --db URL [--host H] [--port N] [--threads N] [--upgrade]
                       [--connection-limit N] [--channel-timeout S] [--request-timeout S]
                       [--max-request-body BYTES] [--max-request-header BYTES]
    chttp-server demo [--transfers N] [--kill-rate R] [--seed S] [--db-dir DIR] [--postgres]
                      [--asgi]
    chttp-server console [--db URL] [--journal URL] [--host H] [--port N] [--allow-actions --token T]

``serve`` runs the application under waitress, wrapped in :class:`CertifiedMiddleware`.
``--app`` names a plain WSGI application *or* a :class:`~chttp_server.Resource` (an
instance, or a subclass that takes no arguments, which is instantiated); either way the
middleware is applied here, once, so the module stays free of deployment settings such
as the database URL. An attribute that is already a ``CertifiedMiddleware`` is refused
(the middleware must not be stacked twice). Like ``gunicorn``, the current directory is
put on ``sys.path`` so ``--app myservice:app`` finds ``./myservice.py``.

Only ``db upgrade`` and ``serve --upgrade`` create anything: every other command refuses a
missing SQLite file or a database without the chttp tables. Mistakes are one line on
stderr, exit status 2 for the command line or configuration, 1 for a runtime failure
(:mod:`chttp_core.commandline`); ``--debug`` shows the traceback instead.

The demo lives in ``chttp_examples``, which the library never imports: its options are
parsed by the demo itself when it runs, so ``chttp-server --help`` stays fast and the
receiver works without the examples installed.

Each subcommand is one ``_cmd_<name>`` function registered with ``set_defaults``, so a
new subcommand is a parser block and a function, nothing more.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import socket
import sys
from datetime import timedelta
from typing import Any, Callable, Sequence

from chttp_core.commandline import (
    EXIT_USAGE,
    CommandError,
    add_debug_option,
    known_revisions,
    non_negative,
    open_database,
    positive_int,
    require_schema,
    run_command,
    shown_url,
)
from chttp_core.errors import ForeignSchemaError
from chttp_server import serving

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
    purge.add_argument("--batch-size", type=positive_int, default=1000, metavar="N",
                       help="messages deleted per transaction (default: %(default)s)")
    purge.add_argument("--pause", type=non_negative("seconds"), default=0.0, metavar="SECONDS",
                       help="sleep between batches, leaving the database to live traffic "
                            "(default: %(default)s)")
    purge.set_defaults(handler=_cmd_purge)


def _cmd_purge(args: argparse.Namespace) -> int:
    from chttp_server.store import MessageStore

    engine = open_database(args.db)
    try:
        require_schema(engine, args.db)
        # Retention is already baked into each row's expires_at.
        store = MessageStore(engine, retention=timedelta(days=15), claim_timeout=5.0)
        deleted = store.purge(batch_size=args.batch_size, pause=args.pause)
    finally:
        engine.dispose()
    print(f"purged {deleted} expired message(s)")
    return 0


# -- serve ---------------------------------------------------------------------------


def _port(text: str) -> int:
    """An argparse ``type``: a TCP port, 0 for any free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, not {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, not {value}")
    return value


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="serve a WSGI application or Resource, certified, with waitress"
    )
    serve.add_argument("--app", required=True, metavar="MODULE:ATTR",
                       help="WSGI application or Resource to wrap in CertifiedMiddleware")
    _add_db_option(serve, help="message store URL")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080,
                       help="listen port; 0 picks a free one (default: 8080)")
    serve.add_argument("--threads", type=positive_int, default=4,
                       help="worker threads (default: 4)")
    serve.add_argument("--claim-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="how long a duplicate waits for an in-flight one (default: 5)")
    serve.add_argument("--upgrade", action="store_true",
                       help="create the chttp tables or bring them to head at start-up")
    serving.add_limit_arguments(serve)
    serve.set_defaults(handler=_cmd_serve)


def load_app(spec: str) -> Callable[..., Any]:
    """Import ``module:attr`` (attr may be dotted) and return a WSGI callable.

    A :class:`~chttp_server.Resource` subclass is instantiated; anything else must
    already be callable.
    """
    from chttp_server.errors import ConfigurationError
    from chttp_server.resource import Resource

    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigurationError(f"--app must look like module:attribute, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # the module exists but one of its own imports is missing
        raise ConfigurationError(f"cannot import {module_name!r} (looked in {os.getcwd()} "
                                 "and sys.path)") from None
    for name in attr_path.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attr_path!r}") from None
    if isinstance(target, type) and issubclass(target, Resource):
        target = target()
    if not callable(target):
        raise ConfigurationError(f"{spec} is not a WSGI application or Resource")
    app: Callable[..., Any] = target
    return app


def _cmd_serve(args: argparse.Namespace) -> int:
    from chttp_server.middleware import CertifiedMiddleware

    _check_listen(args.host, args.port)   # a bad --host, --port or --db: one line, early
    open_database(args.db, create=args.upgrade).dispose()
    app = CertifiedMiddleware(
        load_app(args.app),
        db_url=args.db,
        claim_timeout=args.claim_timeout,
        upgrade_schema=args.upgrade,
    )
    try:
        server = serving.create_server(app, host=args.host, port=args.port,
                                       limits=serving.limits_from_arguments(args))
    except OSError as error:
        app.engine.dispose()
        raise _listen_error(error, args.host, args.port) from error
    # One machine-readable line, flushed, so scripts (and the tests) learn a port 0's pick.
    print(f"chttp-server serving {args.app} on http://{args.host}:{server.effective_port}",
          flush=True)
    # SIGTERM stops like Ctrl-C: waitress closes its sockets on SystemExit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run()
    finally:
        app.engine.dispose()
    return 0


def _check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once, as waitress will (which leaks its wake-up pipe on failure)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:
        raise _listen_error(error, host, port) from error


def _listen_error(error: OSError, host: str, port: int) -> CommandError:
    if isinstance(error, socket.gaierror):
        return CommandError(f"cannot listen on host {host!r}: {error.strerror or error}",
                            "give an address of this machine, e.g. --host 127.0.0.1 or 0.0.0.0",
                            status=EXIT_USAGE)
    if error.errno == errno.EADDRINUSE:
        return CommandError(f"port {port} on {host} is already in use",
                            "stop the other server, or pick another --port; 0 picks a free one")
    if error.errno == errno.EADDRNOTAVAIL:
        return CommandError(f"{host} is not an address of this machine",
                            "give one of its addresses, e.g. --host 127.0.0.1 or 0.0.0.0",
                            status=EXIT_USAGE)
    if error.errno == errno.EACCES:
        return CommandError(f"not allowed to listen on port {port}",
                            "ports below 1024 need privileges; pick a higher --port")
    return CommandError(f"cannot listen on {host}:{port}: {error.strerror or error}")


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
                           "install certified-http with its examples (pip install certified-http)"
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
