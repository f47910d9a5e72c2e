"""``chttp-server serve``: a WSGI application or Resource, certified, under waitress.

::

    chttp-server serve --app module:attr [--db URL] [--host H] [--port N] [--threads N] [--upgrade]

The options and the command of :mod:`chttp_server.cli`'s ``serve``, kept here as
``purge``'s are in :mod:`chttp_server.purge_command`: :func:`add_arguments` adds them to
the subcommand's parser, :func:`run` is its handler, :func:`load_app` imports ``--app``.
What ``serve`` does with an application that is already certified, and with a store
that is down at start-up, is said in :mod:`chttp_server.cli` and in :func:`run`'s
helpers below.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import socket
import sys
from typing import Any, Callable

from sqlalchemy import exc as sa_exc

from chttp_core.commandline import (
    EXIT_USAGE,
    CommandError,
    add_debug_option,
    open_database,
    positive_int,
    shown_url,
)
from chttp_server import serving
from chttp_server.certified_apps import Certification, certification_of

__all__ = ["add_arguments", "run", "load_app"]

PROG = "chttp-server"


def add_arguments(serve: argparse.ArgumentParser) -> None:
    """Add serve's options to its parser, and :func:`run` as its handler."""
    serve.add_argument("--app", required=True, metavar="MODULE:ATTR",
                       help="WSGI application or Resource to wrap in CertifiedMiddleware "
                            "(one already certified is served as it is)")
    serve.add_argument("--db", metavar="URL",
                       help="message store URL: sqlite:///path/file.db or "
                            "postgresql://user@host/db (not needed for an application that "
                            "is already certified: its own store is used)")
    add_debug_option(serve)
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
    serve.set_defaults(handler=run)


def _port(text: str) -> int:
    """An argparse ``type``: a TCP port, 0 for any free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, not {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, not {value}")
    return value


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


def run(args: argparse.Namespace) -> int:
    """Serve ``--app`` until SIGTERM or Ctrl-C (the handler of ``chttp-server serve``)."""
    from chttp_server.middleware import CertifiedMiddleware

    _check_listen(args.host, args.port)   # a bad --host or --port: one line, early
    loaded = load_app(args.app)
    certified = certification_of(loaded)
    engine: Any
    if certified is not None:
        # Served as it is: a second middleware would refuse every certified request.
        engine = _serve_as_it_is(args, certified)
        app: Callable[..., Any] = loaded
    else:
        if args.db is None:
            raise CommandError(f"{args.app} is not certified yet: --db names where its messages "
                               "are stored", "e.g. --db sqlite:///receiver.db --upgrade",
                               status=EXIT_USAGE)
        _check_store(args.db, create=args.upgrade)   # a bad --db: one line; down: a warning
        app = CertifiedMiddleware(loaded, db_url=args.db, claim_timeout=args.claim_timeout,
                                  upgrade_schema=args.upgrade)
        engine = app.engine
    try:
        server = serving.create_server(app, host=args.host, port=args.port,
                                       limits=serving.limits_from_arguments(args))
    except OSError as error:
        if engine is not None:
            engine.dispose()
        raise _listen_error(error, args.host, args.port) from error
    # One machine-readable line, flushed, so scripts (and the tests) learn a port 0's pick.
    print(f"chttp-server serving {args.app} on http://{args.host}:{server.effective_port}",
          flush=True)
    if certified is not None:
        print(f"chttp-server: {args.app} is already certified ({certified.kind}, messages in "
              f"{certified.where}): serving it as it is", file=sys.stderr, flush=True)
    # SIGTERM stops like Ctrl-C: waitress closes its sockets on SystemExit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run()
    finally:
        if engine is not None:
            engine.dispose()
    return 0


#: Words of a connection error that no waiting will fix: the URL or the server's
#: configuration is wrong, so ``serve`` refuses to start rather than answer 503 for ever.
_NOT_AN_OUTAGE = ("authentication failed", "does not exist", "no pg_hba.conf entry",
                  "invalid dsn", "invalid connection option", "invalid integer value",
                  "could not translate host name", "is not a sqlite database", "unable to open")


def _check_store(url: str, *, create: bool) -> None:
    """Refuse a wrong ``--db`` at once; start anyway while the store is merely down.

    docs/protocol.rst §4: a receiver that starts while its store is down starts and
    answers 503 until the store returns (a supervisor restarting it during an outage, or
    a boot where the receiver comes up before its database, must not crash-loop). A
    missing SQLite file, a bad URL, a refused login or a database that does not exist
    are mistakes no retry fixes: one line, non-zero exit, as before. Any other failure
    to connect to a server database (refused, timed out, starting up, shutting down) is
    an outage: one warning line, and the middleware checks — or, with ``--upgrade``,
    upgrades — the schema again on the first certified request after the store is back.
    """
    try:
        open_database(url, create=create).dispose()
    except CommandError as error:
        cause = error.__cause__
        outage = (isinstance(cause, (sa_exc.OperationalError, sa_exc.InterfaceError))
                  and not shown_url(url).startswith("sqlite")
                  and not any(words in str(error).lower() for words in _NOT_AN_OUTAGE))
        if not outage:
            raise
        print(f"{PROG}: warning: {error.message}; serving anyway: certified requests are "
              "answered 503 until the store is back", file=sys.stderr, flush=True)


def _serve_as_it_is(args: argparse.Namespace, certified: Certification) -> Any:
    """Check the options against an application that certifies itself; its store's engine.

    ``--db`` may only repeat where the application already stores its messages, and
    ``--upgrade`` upgrades that store; ``--claim-timeout`` is the application's own.
    """
    from chttp_core import migrate
    from chttp_core.db import make_engine, normalize_url
    from chttp_core.store_urls import check_store_url
    from chttp_server.sessions import same_database

    drop = f"drop --db: serve runs {args.app} as it is, with its own store"
    if certified.engine is None:   # Django: its settings choose the store
        if args.db is not None:
            raise CommandError(f"{args.app} is already certified ({certified.kind}) and stores "
                               f"its messages in {certified.where}, chosen by its settings",
                               drop, status=EXIT_USAGE)
        if args.upgrade:
            raise CommandError(f"{args.app} is a Django project: its store's tables come from "
                               "its migrations", "run `python manage.py migrate`, and drop "
                               "--upgrade", status=EXIT_USAGE)
        return None
    if args.db is not None:
        given = make_engine(check_store_url(args.db, create=True, adapt=normalize_url))
        try:
            if not same_database(given, certified.engine):
                raise CommandError(f"{args.app} is already certified ({certified.kind}) and "
                                   f"stores its messages in {certified.where}, not in "
                                   f"{shown_url(args.db)}", drop, status=EXIT_USAGE)
        finally:
            given.dispose()
    if args.upgrade:
        migrate.upgrade(certified.engine)
    return certified.engine


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
