"""``chttp-server``: the receiver's command line.

::

    chttp-server db upgrade --db URL      bring the chttp tables to this code's head
    chttp-server db current --db URL      print the revision the database is at
    chttp-server purge --db URL           delete expired messages in bounded batches
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import Sequence

from chttp_client.db import make_engine

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chttp-server", description="Certified HTTP receiver")
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="schema migrations of the chttp tables")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    for name, text in (("upgrade", "upgrade to the newest revision"),
                       ("current", "print the current revision")):
        sub = db_commands.add_parser(name, help=text)
        sub.add_argument("--db", required=True, metavar="URL", help="database URL")
    db_commands.choices["upgrade"].add_argument(
        "--revision", default="head", help="target revision (default: head)")

    purge = commands.add_parser("purge", help="delete expired messages")
    purge.add_argument("--db", required=True, metavar="URL", help="database URL")
    purge.add_argument("--batch-size", type=int, default=1000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chttp_server import migrate

    if args.command == "db":
        if args.db_command == "upgrade":
            migrate.upgrade(args.db, args.revision)
            print(f"chttp schema at {migrate.current_revision(args.db)}")
        else:
            print(migrate.current_revision(args.db) or "(no chttp schema)")
        return 0
    if args.command == "purge":
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
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
