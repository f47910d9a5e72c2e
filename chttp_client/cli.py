"""``chttp-client``: resume, list and inspect oplogs from the command line.

::

    chttp-client resume --db URL --import myapp.transfers   finish every open oplog
    chttp-client list   --db URL [--all]                    open (or all) oplogs
    chttp-client show   --db URL OPLOG_ID                   one oplog and its steps
    chttp-client purge  --db URL --older-than-days N        delete old finished oplogs

``resume`` needs the code of the functions: ``--import`` (repeatable) imports the modules
whose ``@resumable`` decorators register them. The functions run with this command's
journal (a default HTTP client); an application that configures its own client (auth,
certificates) should call ``journal.resume_all()`` at start-up instead.
Exit status of ``resume``: 0 if every oplog finished (done or failed), 1 if any was
refused (unknown version, non-determinism) and left open for a human.
``purge`` keeps receiver handlers' oplogs and unacknowledged answers for
``--horizon-days`` (default 15, the receiver's default retention; see
:mod:`chttp_client.retention`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from datetime import timedelta
from typing import Sequence

from chttp_client.retention import RECEIVER_RETENTION

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chttp-client", description="Certified HTTP sender")
    commands = parser.add_subparsers(dest="command", required=True)
    resume = commands.add_parser("resume", help="resume every open oplog")
    resume.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="module defining the @resumable functions (repeatable)")
    listing = commands.add_parser("list", help="list open oplogs")
    listing.add_argument("--all", action="store_true", help="finished oplogs too")
    show = commands.add_parser("show", help="show one oplog with its steps")
    show.add_argument("oplog_id")
    purge = commands.add_parser("purge", help="delete finished oplogs older than N days")
    purge.add_argument("--older-than-days", type=float, required=True, metavar="N",
                       help="delete finished oplogs completed more than N days ago")
    purge.add_argument("--horizon-days", type=float, default=RECEIVER_RETENTION.days, metavar="D",
                       help="keep handler oplogs and unacknowledged answers this long "
                            "(default: %(default)s, the receiver's default retention)")
    purge.add_argument("--batch-size", type=int, default=1000, metavar="K",
                       help="oplogs deleted per transaction (default: %(default)s)")
    for sub in (resume, listing, show, purge):
        sub.add_argument("--db", required=True, metavar="URL", help="journal database URL")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chttp_client.journal import Journal

    if args.command == "resume":
        sys.path.insert(0, "")
        for module in args.imports:
            importlib.import_module(module)
    with Journal(args.db) as journal:
        if args.command == "resume":
            outcomes = journal.resume_all()
            for outcome in outcomes:
                detail = repr(outcome.value) if outcome.status == "done" else str(outcome.error)
                print(f"{outcome.oplog_id}  {outcome.function} v{outcome.version}  "
                      f"{outcome.status}  {detail}")
            print(f"{len(outcomes)} oplog(s) resumed")
            return 1 if any(o.status == "refused" for o in outcomes) else 0
        if args.command == "purge":
            deleted = journal.purge(older_than=timedelta(days=args.older_than_days),
                                    horizon=timedelta(days=args.horizon_days),
                                    batch_size=args.batch_size)
            print(f"{deleted} oplog(s) purged")
            return 0
        if args.command == "list":
            infos = journal.list() if args.all else journal.list_open()
            for info in infos:
                print(f"{info.id}  {info.state:6}  {info.function} v{info.version}  "
                      f"{info.created_at.isoformat()}  {info.lease_owner or '-'}")
            return 0
        info = journal.get(args.oplog_id)
        print(f"oplog     {info.id}\nfunction  {info.function} v{info.version}\nstate     {info.state}")
        print(f"arguments {json.dumps(info.arguments, default=repr)}")
        if info.result is not None:
            print(f"result    {json.dumps(info.result)}")
        for step in info.steps:
            line = f"  {step.number:3}  {step.kind:7}  {step.state:8}  {step.name}"
            if step.message_id:
                status = step.response["status"] if step.response else "-"
                acked = "acked" if step.acknowledged_at else "unacked"
                line += f"  id={step.message_id} status={status} {acked}"
            elif step.outcome is not None:
                line += f"  {json.dumps(step.outcome)[:120]}"
            print(line)
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
