"""``chttp-server``: the receiver's command line.

::

    chttp-server db upgrade --db URL      bring the chttp tables to this code's head
    chttp-server db current --db URL      print the revision the database is at
    chttp-server purge --db URL           delete expired messages in bounded batches
    chttp-server serve --app module:attr --db URL [--host H] [--port N] [--threads N] [--upgrade]
                       [--connection-limit N] [--channel-timeout S] [--request-timeout S]
                       [--max-request-body BYTES] [--max-request-header BYTES]
    chttp-server demo [--transfers N] [--kill-rate R] [--seed S] [--db-dir DIR] [--postgres]

``serve`` runs the application under waitress, wrapped in :class:`CertifiedMiddleware`.
``--app`` names a plain WSGI application *or* a :class:`~chttp_server.Resource` (an
instance, or a subclass that takes no arguments, which is instantiated); either way the
middleware is applied here, once, so the module stays free of deployment settings such
as the database URL. An attribute that is already a ``CertifiedMiddleware`` is refused
(the middleware must not be stacked twice). Like ``gunicorn``, the current directory is
put on ``sys.path`` so ``--app myservice:app`` finds ``./myservice.py``.

Each subcommand is one ``_cmd_<name>`` function registered with ``set_defaults``, so a
new subcommand is a parser block and a function, nothing more.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from datetime import timedelta
from typing import Any, Callable, Sequence

from chttp_core.db import make_engine
from chttp_server import serving

__all__ = ["main", "build_parser", "load_app"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chttp-server", description="Certified HTTP receiver")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_db(commands)
    _add_purge(commands)
    _add_serve(commands)
    _add_demo(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


# -- db ------------------------------------------------------------------------------


def _add_db(commands: Any) -> None:
    db = commands.add_parser("db", help="schema migrations of the chttp tables")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="upgrade to the newest revision")
    upgrade.add_argument("--db", required=True, metavar="URL", help="database URL")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    upgrade.set_defaults(handler=_cmd_db_upgrade)
    current = db_commands.add_parser("current", help="print the current revision")
    current.add_argument("--db", required=True, metavar="URL", help="database URL")
    current.set_defaults(handler=_cmd_db_current)


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from chttp_core import migrate

    migrate.upgrade(args.db, args.revision)
    print(f"chttp schema at {migrate.current_revision(args.db)}")
    return 0


def _cmd_db_current(args: argparse.Namespace) -> int:
    from chttp_core import migrate

    print(migrate.current_revision(args.db) or "(no chttp schema)")
    return 0


# -- purge ---------------------------------------------------------------------------


def _add_purge(commands: Any) -> None:
    purge = commands.add_parser("purge", help="delete expired messages")
    purge.add_argument("--db", required=True, metavar="URL", help="database URL")
    purge.add_argument("--batch-size", type=int, default=1000)
    purge.set_defaults(handler=_cmd_purge)


def _cmd_purge(args: argparse.Namespace) -> int:
    from chttp_server.store import MessageStore

    engine = make_engine(args.db)
    try:
        # Retention is already baked into each row's expires_at.
        store = MessageStore(engine, retention=timedelta(days=15), claim_timeout=5.0)
        deleted = store.purge(batch_size=args.batch_size)
    finally:
        engine.dispose()
    print(f"purged {deleted} expired message(s)")
    return 0


# -- serve ---------------------------------------------------------------------------


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="serve a WSGI application or Resource, certified, with waitress"
    )
    serve.add_argument("--app", required=True, metavar="MODULE:ATTR",
                       help="WSGI application or Resource to wrap in CertifiedMiddleware")
    serve.add_argument("--db", required=True, metavar="URL", help="message store URL")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080,
                       help="listen port; 0 picks a free one (default: 8080)")
    serve.add_argument("--threads", type=int, default=4, help="worker threads (default: 4)")
    serve.add_argument("--claim-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="how long a duplicate waits for an in-flight one (default: 5)")
    serve.add_argument("--upgrade", action="store_true",
                       help="bring the chttp schema to head at start-up")
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
    return target


def _cmd_serve(args: argparse.Namespace) -> int:
    from chttp_server.errors import ChttpServerError
    from chttp_server.middleware import CertifiedMiddleware

    try:
        app = CertifiedMiddleware(
            load_app(args.app),
            db_url=args.db,
            claim_timeout=args.claim_timeout,
            upgrade_schema=args.upgrade,
        )
        server = serving.create_server(app, host=args.host, port=args.port,
                                       limits=serving.limits_from_arguments(args))
    except ChttpServerError as error:
        print(f"chttp-server: {error}", file=sys.stderr)
        return 2
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


# -- demo ------------------------------------------------------------------------------


def _add_demo(commands: Any) -> None:
    from chttp_examples.escrow import cli as demo_cli   # options only; the demo loads on run

    demo = commands.add_parser(
        "demo", help="the escrow under chaos: kill processes at random, then audit every coin")
    demo_cli.add_arguments(demo)
    demo.set_defaults(handler=demo_cli.run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
