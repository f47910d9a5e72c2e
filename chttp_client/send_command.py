"""``chttp-client send``: a certified curl, journaled, so a rerun never sends twice.

::

    chttp-client send --db JOURNAL [--key KEY] METHOD URL [--json JSON | --data @FILE|TEXT]
                      [--header 'Name: value']… [--deadline SECONDS]

The send is a resumable function (``chttp_client.send`` v1) whose oplog id is ``KEY``
(default: a fresh one, printed on stderr). Rerunning the same command with the same key
is the point: an oplog that finished prints its recorded answer without sending; one
that a crash or Ctrl-C cut off is resumed and sends *the same message id* with the same
body, so the receiver answers from its store if it had already run it. The same key
with another request (method, URL, headers, body or deadline) is refused and nothing is
sent: a key names one request. ``chttp-client list`` / ``show`` show these sends like
any oplog.

The response body goes to stdout, byte for byte; the status, the message id and whether
the answer was a replay go to stderr. Exit status as httpie's ``--check-status``: 0 for
2xx, 3 / 4 / 5 for 3xx / 4xx / 5xx, 1 when no answer came (deadline passed, refused
request) and 2 for a command line that cannot work.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from chttp_client.registry import register
from chttp_core.commandline import EXIT_FAILURE, EXIT_USAGE, CommandError, add_debug_option

__all__ = ["FUNCTION", "add_arguments"]

#: The name the sends are journaled under (what ``list`` shows and ``resume`` needs).
FUNCTION = "chttp_client.send"


def _send(method: str, url: str, headers: list[list[str]], body: bytes | None,
          deadline: float | None, *, chttp_context: Any) -> dict[str, Any]:
    """The journaled function: one certified send, its answer as the oplog's result."""
    response = chttp_context.send(method, url, content=body,
                                  headers=[(name, value) for name, value in headers],
                                  deadline=deadline)
    return {"status": response.status_code, "headers": [list(pair) for pair in
                                                         response.headers.multi_items()],
            "body": response.content}


register(FUNCTION, 1, _send)


def add_arguments(commands: Any) -> None:
    """Add ``send`` to the ``chttp-client`` subcommands."""
    send = commands.add_parser(
        "send", help="send one certified request (a rerun with the same --key never sends twice)")
    send.add_argument("method", metavar="METHOD")
    send.add_argument("url", metavar="URL")
    send.add_argument("--db", required=True, metavar="URL",
                      help="journal URL (sqlite:///sends.db is made on first use)")
    send.add_argument("--key", help="names this request: rerun with it to finish or replay "
                                    "it (default: a fresh key, printed)")
    body = send.add_mutually_exclusive_group()
    body.add_argument("--json", dest="json_body", metavar="JSON",
                      help="a JSON body (sets Content-Type: application/json)")
    body.add_argument("--data", metavar="@FILE|TEXT", help="the body: text, or @file to read")
    send.add_argument("--header", "-H", dest="headers", action="append", default=[],
                      metavar="'Name: value'", help="a request header (repeatable)")
    send.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                      help="give up this long after the first attempt (default: the "
                           "journal's retry deadline, one day)")
    add_debug_option(send)
    send.set_defaults(handler=_cmd_send)


def _request(args: argparse.Namespace) -> tuple[list[list[str]], bytes | None]:
    headers = []
    for header in args.headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise CommandError(f"--header {header!r} is not 'Name: value'", status=EXIT_USAGE)
        headers.append([name.strip(), value.strip()])
    body: bytes | None = None
    if args.json_body is not None:
        try:
            json.loads(args.json_body)
        except ValueError as error:
            raise CommandError(f"--json is not JSON: {error}", status=EXIT_USAGE) from None
        body = args.json_body.encode("utf-8")
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(["Content-Type", "application/json"])
    elif args.data is not None:
        if args.data.startswith("@"):
            try:
                body = Path(args.data[1:]).read_bytes()
            except OSError as error:
                raise CommandError(f"cannot read {args.data[1:]}: {error.strerror}",
                                   status=EXIT_USAGE) from None
        else:
            body = args.data.encode("utf-8")
    if args.deadline is not None and not args.deadline > 0:
        raise CommandError("--deadline must be a positive number of seconds", status=EXIT_USAGE)
    return headers, body


def _cmd_send(args: argparse.Namespace) -> int:
    from chttp_client.errors import JournalError
    from chttp_client.journal import Journal

    headers, body = _request(args)
    arguments = [args.method.upper(), args.url, headers, body, args.deadline]
    key = args.key or str(uuid.uuid4())
    if args.key is None:
        print(f"key: {key}  (rerun with --key {key} to finish or replay this send)",
              file=sys.stderr)
    journal = Journal(args.db)
    try:
        journal.ensure_schema()
        try:
            info = journal.get(key)
        except JournalError:
            info = None
        if info is None:
            result = journal.run(FUNCTION, 1, _send, tuple(arguments), {}, oplog_id=key)
            how = "sent"
        else:
            if info.function != FUNCTION or info.arguments != {"args": arguments, "kwargs": {}}:
                raise CommandError(
                    f"the key {key!r} already names another request "
                    f"({info.function}: {_describe(info.arguments)})",
                    "nothing was sent; use a new --key for a new request")
            how = "recorded answer, not sent again" if info.state != "open" else "resumed"
            result = journal.resume(key)
        message_id = next((step.message_id for step in journal.get(key).steps
                           if step.message_id), "-")
    finally:
        journal.close()
    status = int(result["status"])
    replayed = any(name.lower() == "idempotent-replayed" for name, _ in result["headers"])
    print(f"HTTP {status}  message id {message_id}  key {key}  ({how}"
          + (", Idempotent-Replayed: the receiver answered from its store" if replayed else "")
          + ")", file=sys.stderr)
    sys.stdout.buffer.write(result["body"])
    sys.stdout.flush()
    return 0 if 200 <= status < 300 else (status // 100 if 300 <= status < 600 else EXIT_FAILURE)


def _describe(arguments: Any) -> str:
    try:
        method, url = arguments["args"][0], arguments["args"][1]
        return f"{method} {url}"
    except (KeyError, IndexError, TypeError):
        return "other arguments"
