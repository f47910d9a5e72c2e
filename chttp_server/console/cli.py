"""``chttp-server console``: its options, and the runner that serves it with waitress.

``chttp_server.cli`` registers the subcommand with :func:`add_arguments` and calls
:func:`run`; Jinja2 and the pages load only when it runs. :func:`build_console` makes
the WSGI application from code; :class:`ConsoleProcess` runs the command as a child
process, which is how another program (the escrow demo) opens a console beside itself
without sharing its threads or its fate.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any, Sequence

from chttp_core.errors import SchemaOutOfDateError
from chttp_server.errors import ConfigurationError

__all__ = ["add_arguments", "run", "build_console", "allowed_hosts_for", "ConsoleProcess",
           "DEFAULT_PORT", "TOKEN_VARIABLE"]

DEFAULT_PORT = 8090
#: Where the token may come from instead of --token (a command line is visible in ps).
TOKEN_VARIABLE = "CHTTP_CONSOLE_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="URL", help="the receiver's message store")
    parser.add_argument("--journal", metavar="URL",
                        help="the sender's journal (the same URL as --db if one database "
                             "holds both)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="listen address (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"listen port; 0 picks a free one (default: {DEFAULT_PORT})")
    parser.add_argument("--refresh", type=int, default=5, metavar="SECONDS",
                        help="pages reload themselves this often; 0: never (default: 5)")
    parser.add_argument("--allow-actions", action="store_true",
                        help="enable acknowledging messages and resuming oplogs (POST, with "
                             "the token)")
    parser.add_argument("--token", default=os.environ.get(TOKEN_VARIABLE),
                        help=f"the token actions require (default: ${TOKEN_VARIABLE})")
    parser.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[],
                        metavar="NAME",
                        help="a host name (or address) clients use to reach the console, "
                             "checked against each request's Host header; repeatable. "
                             "Needed with a --host beyond this machine that is not itself "
                             "that name (default: the loopback names on 127.0.0.1; --host "
                             "itself otherwise)")
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        metavar="MODULE",
                        help="module defining the @resumable functions, for resume "
                             "(repeatable)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(host: str, allowed: Sequence[str] = ()) -> tuple[str, ...]:
    """The ``Host`` names the console answers to when it listens on ``host``.

    The Host check is what keeps a page of another site, reached through DNS rebinding,
    from reading the console: it stays on whatever the address. Given names win; on a
    loopback address the loopback names; on another address that address itself; on
    an unspecified one (``0.0.0.0``, ``::``) there is no name to assume, and
    :class:`ConfigurationError` asks for ``--allowed-host``.
    """
    from chttp_server.console.app import LOOPBACK_NAMES

    if allowed:
        return tuple(name.strip().lower() for name in allowed)
    if _loopback(host):
        return LOOPBACK_NAMES
    try:
        unspecified = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        unspecified = False  # a host name: the name clients use
    if unspecified:
        raise ConfigurationError(
            f"--host {host} listens on every address: name the host names clients use to "
            "reach the console with --allowed-host NAME (repeatable), so that its Host "
            "check stays on")
    return (host.strip("[]").lower(),)


def build_console(*, db: str | None, journal: str | None, host: str = "127.0.0.1",
                  refresh: int = 5, allow_actions: bool = False, token: str | None = None,
                  imports: Sequence[str] = (), allowed_hosts: Sequence[str] = ()) -> Any:
    """A :class:`~chttp_server.console.ConsoleApp` over the given databases.

    Raises :class:`~chttp_server.errors.ConfigurationError` for a bad combination and
    :class:`~chttp_core.errors.SchemaOutOfDateError` for a database not at head.
    """
    from chttp_server.console.actions import Actions
    from chttp_server.console.app import ConsoleApp
    from chttp_server.console.database import ConsoleDatabase

    if db is None and journal is None:
        raise ConfigurationError("give --db (a receiver's store), --journal (a sender's), or both")
    if token and not allow_actions:
        raise ConfigurationError("--token without --allow-actions: actions stay disabled; "
                                 "add --allow-actions or drop the token")
    if allow_actions and not token:
        raise ConfigurationError(f"--allow-actions needs a token: --token T or ${TOKEN_VARIABLE}")
    if refresh < 0:
        raise ConfigurationError("--refresh must be 0 (off) or a number of seconds")
    hosts = allowed_hosts_for(host, allowed_hosts)
    databases = [ConsoleDatabase(url) if url else None for url in (db, journal)]
    try:
        for database in databases:
            if database is not None:
                database.check_schema()
        actions = None
        if allow_actions:
            assert token is not None
            actions = Actions(token=token, imports=imports,
                              db_url=databases[0].url if databases[0] else None,
                              journal_url=databases[1].url if databases[1] else None)
    except BaseException:
        for database in databases:
            if database is not None:
                database.dispose()
        raise
    return ConsoleApp(db=databases[0], journal=databases[1], actions=actions, refresh=refresh,
                      allowed_hosts=hosts)


def run(args: argparse.Namespace) -> int:
    """Serve the console until SIGTERM or Ctrl-C; 2 on a configuration error."""
    import waitress

    try:
        app = build_console(db=args.db, journal=args.journal, host=args.host,
                            refresh=args.refresh, allow_actions=args.allow_actions,
                            token=args.token, imports=args.imports,
                            allowed_hosts=args.allowed_hosts)
    except (ConfigurationError, SchemaOutOfDateError) as error:
        print(f"chttp-server console: {error}", file=sys.stderr)
        return 2
    if not _loopback(args.host):
        print(f"chttp-server console: listening on {args.host}, beyond this machine; the "
              "pages (and any token) travel unencrypted: put TLS in front", file=sys.stderr)
    server = waitress.create_server(app, host=args.host, port=args.port, threads=4)
    # One machine-readable line, flushed, so scripts (and the tests) learn a port 0's pick.
    print(f"chttp-server console on http://{args.host}:{server.effective_port}/", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run()
    finally:
        app.close()
    return 0


class ConsoleProcess:
    """``chttp-server console`` as a child process on a free loopback port (read-only).

    ``url`` is where it serves; :meth:`stop` ends it. Raises :class:`RuntimeError` with
    the command's complaint if it does not start.
    """

    def __init__(self, *, db: str | None, journal: str | None, refresh: int = 2) -> None:
        command = [sys.executable, "-m", "chttp_server.cli", "console", "--port", "0",
                   "--refresh", str(refresh)]
        command += ["--db", db] if db else []
        command += ["--journal", journal] if journal else []
        # Its log goes to a file, not a pipe nobody reads (a full pipe would block it).
        self._log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log,
                                        stdin=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if " on http" not in line:
            self.process.kill()
            self.process.communicate(timeout=30)
            self._log.seek(0)
            raise RuntimeError(f"the console did not start: {line}{self._log.read()}".strip())
        self.url = line.split(" on ", 1)[1].strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - waitress stops on SIGTERM
            self.process.kill()
            self.process.communicate()
        self._log.close()
