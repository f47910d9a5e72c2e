"""``chttp-server messages list/show``: the console's message pages, printed in a shell.

Received messages could be seen only in the web console (issue 25); an operator on a
server wants ``grep``-able lines and ``jq``-able JSON instead. The rows come from the
console's own read-only queries (:mod:`chttp_server.console.queries`), so the shell and
the browser show exactly the same thing, and neither writes (no Jinja2 is needed).

``list`` prints one line per message, newest first::

    2026-12-07T07:40:12+00:00  completed     201  order-1  scope=-  expires 2026-12-22T07:40:12+00:00  27 B

``--json`` prints one JSON object per line instead; ``show`` prints one message with its
stored headers and (a preview of) its body.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

from chttp_core.commandline import (
    EXIT_FAILURE,
    CommandError,
    add_debug_option,
    open_database,
    positive_int,
    require_schema,
    shown_url,
)

__all__ = ["add_arguments"]


def add_arguments(commands: Any) -> None:
    """Add ``messages list`` and ``messages show`` to the ``chttp-server`` subcommands."""
    parser = commands.add_parser("messages", help="list or show the messages a receiver stored")
    sub = parser.add_subparsers(dest="messages_command", required=True)
    listing = sub.add_parser("list", help="one line per stored message, newest first")
    listing.add_argument("--limit", type=positive_int, default=50, metavar="N",
                         help="at most N messages (default: %(default)s)")
    listing.add_argument("--id", dest="message_id", default="", metavar="TEXT",
                         help="only ids containing TEXT")
    listing.add_argument("--state", choices=("completed", "acknowledged", "expired"),
                         help="only messages in this state")
    listing.set_defaults(handler=_cmd_list)
    show = sub.add_parser("show", help="one message, with its stored response")
    show.add_argument("message_id")
    show.add_argument("--scope", default=None,
                      help="the principal's scope (default: the only message with this id)")
    show.set_defaults(handler=_cmd_show)
    for command in (listing, show):
        command.add_argument("--db", required=True, metavar="URL",
                             help="message store URL: sqlite:///path/file.db or postgresql://…")
        command.add_argument("--json", action="store_true", help="JSON instead of text")
        add_debug_option(command)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _row_json(row: Any) -> dict[str, Any]:
    return {"message_id": row.message_id, "scope": row.scope, "state": row.state,
            "status": row.status, "received_at": row.received_at.isoformat(),
            "expires_at": row.expires_at.isoformat(), "body_bytes": row.body_size}


def _cmd_list(args: argparse.Namespace) -> int:
    from chttp_server.console.queries import MessageFilter, search_messages

    engine = open_database(args.db)
    try:
        require_schema(engine, args.db)
        now = _now()
        with engine.connect() as connection:
            rows, total = search_messages(
                connection, MessageFilter(message_id=args.message_id, state=args.state or ""),
                now, page_size=args.limit)
    finally:
        engine.dispose()
    for row in rows:
        if args.json:
            print(json.dumps(_row_json(row)))
            continue
        state = "expired" if row.expired(now) else row.state
        size = "-" if row.body_size is None else f"{row.body_size} B"
        print(f"{row.received_at.isoformat()}  {state:12}  {row.status or '-':>3}  "
              f"{row.message_id}  scope={row.scope or '-'}  "
              f"expires {row.expires_at.isoformat()}  {size}")
    if not args.json and total > len(rows):
        print(f"({len(rows)} of {total} shown; --limit shows more)", file=sys.stderr)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from chttp_core.schema import messages
    from chttp_server.console.queries import get_message

    engine = open_database(args.db)
    try:
        require_schema(engine, args.db)
        with engine.connect() as connection:
            scopes = [args.scope] if args.scope is not None else list(connection.scalars(
                select(messages.c.scope).where(messages.c.message_id == args.message_id)))
            if len(scopes) > 1:
                raise CommandError(f"{len(scopes)} messages have the id {args.message_id!r}, "
                                   "one per scope", "pick one with --scope: "
                                   + ", ".join(repr(scope) for scope in scopes),
                                   status=EXIT_FAILURE)
            detail = get_message(connection, scopes[0], args.message_id) if scopes else None
    finally:
        engine.dispose()
    if detail is None:
        raise CommandError(f"no message {args.message_id!r} in {shown_url(args.db)}",
                           f"`chttp-server messages list --db {shown_url(args.db)}` lists them")
    body = detail.body or b""
    text = body.decode("utf-8", "replace")
    if args.json:
        print(json.dumps({**_row_json(detail.row), "fingerprint": detail.fingerprint,
                          "headers": detail.headers, "body": text}))
        return 0
    row = detail.row
    print(f"message   {row.message_id}\nscope     {row.scope or '-'}\nstate     {row.state}")
    print(f"received  {row.received_at.isoformat()}\nexpires   {row.expires_at.isoformat()}")
    print(f"status    {row.status if row.status is not None else '-'}")
    for name, value in detail.headers or []:
        print(f"header    {name}: {value}")
    print(f"body      {text}" + (" …" if (row.body_size or 0) > len(body) else ""))
    return 0
