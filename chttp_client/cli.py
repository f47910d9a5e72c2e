"""``chttp-client``: resume, list and inspect oplogs from the command line.

::

    chttp-client resume --db URL --import myapp.transfers   finish every open oplog
                        [--id OPLOG_ID]                      … or only this one
    chttp-client list   --db URL [--all]                    open (or all) oplogs
    chttp-client show   --db URL OPLOG_ID                   one oplog and its steps
    chttp-client purge  --db URL --older-than-days N        delete old finished oplogs
    chttp-client abandon --db URL OPLOG_ID --reason TEXT    dead-letter one open oplog
                         [--force]                          … even under a live lease
    chttp-client send --db URL [--key K] METHOD URL [--json J | --data @F] [-H 'N: v']
                                                            one certified request, a curl

``resume`` needs the code of the functions: ``--import`` (repeatable) imports the modules
whose ``@resumable`` decorators register them. Importing runs the module's top-level code,
so a module that also *starts* work when run as a script keeps that under
``if __name__ == "__main__":``. ``async def`` functions' oplogs run on an event loop of
their own, one after the other. The functions run with this command's journal (a default
HTTP client); an application that configures its own client (auth, certificates) should
call ``journal.resume_all()`` at start-up instead.

Exit status of ``resume``: 0 if every oplog finished (done or failed) or was busy in
another live process, 1 if any was refused (no such function or version registered:
left open, import it and resume again), unreadable (a record this code cannot read:
quarantined, left open and never run, the others resumed all the same; ``show`` prints
its raw rows and the decode error, exit 1) or abandoned now (non-determinism, or too
many resumes without progress: dead-lettered with its reason, see ``show``). ``resume
--id`` resumes the named oplogs only (a busy or divergent one is exit 1 too, and left
open). ``list`` shows an unreadable oplog with the status ``unreadable`` and why. ``abandon``
dead-letters an open oplog by hand (:meth:`Journal.abandon`): it is never resumed again;
an oplog whose lease a live worker holds is refused (exit 1, naming the holder and the
lease's end) unless ``--force`` is given, and that worker's next journal write then
fails with :class:`~chttp_client.errors.OplogAbandonedError` (the operator's reason).
``purge`` keeps receiver handlers' oplogs
and unacknowledged answers for ``--horizon-days`` (default 15, the receiver's default
retention; see :mod:`chttp_client.retention`).

No command but ``send`` (:mod:`chttp_client.send_command`) creates a journal: a missing SQLite file or a database without the chttp
tables is an error (exit 2 and 1). Other mistakes are one line on stderr too
(:mod:`chttp_core.commandline`); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Sequence

from chttp_client.quarantine import unreadable_ids
from chttp_client.records import OPLOG_UNREADABLE
from chttp_client import send_command
from chttp_client.retention import RECEIVER_RETENTION
from chttp_core.commandline import (
    EXIT_FAILURE,
    EXIT_USAGE,
    CommandError,
    add_debug_option,
    non_negative,
    open_database,
    positive_int,
    require_schema,
    run_command,
    shown_url,
)
from chttp_core.schema import OPLOG_OPEN

if TYPE_CHECKING:  # pragma: no cover
    from chttp_client.journal import Journal, ResumeOutcome

__all__ = ["main", "build_parser"]

PROG = "chttp-client"


#: An argparse ``type``: a finite number of days, not negative.
_days = non_negative("days")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Certified HTTP sender")
    add_debug_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True)
    resume = commands.add_parser("resume", help="resume every open oplog")
    resume.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="module defining the @resumable functions (repeatable)")
    resume.add_argument("--id", dest="ids", action="append", default=[], metavar="OPLOG_ID",
                        help="resume only this oplog (repeatable; default: every open one)")
    resume.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="stop waiting after SECONDS: oplogs still retrying are reported "
                             "pending, stopped, and left for the next resume (default: wait)")
    resume.set_defaults(handler=_cmd_resume)
    listing = commands.add_parser("list", help="list open oplogs")
    listing.add_argument("--all", action="store_true", help="finished oplogs too")
    listing.set_defaults(handler=_cmd_list)
    show = commands.add_parser("show", help="show one oplog with its steps")
    show.add_argument("oplog_id")
    show.set_defaults(handler=_cmd_show)
    purge = commands.add_parser("purge", help="delete finished oplogs older than N days")
    purge.add_argument("--older-than-days", type=_days, required=True, metavar="N",
                       help="delete finished oplogs completed more than N days ago")
    purge.add_argument("--horizon-days", type=_days, default=RECEIVER_RETENTION.days, metavar="D",
                       help="keep handler oplogs and unacknowledged answers this long "
                            "(default: %(default)s, the receiver's default retention)")
    purge.add_argument("--batch-size", type=positive_int, default=1000, metavar="K",
                       help="oplogs deleted per transaction (default: %(default)s)")
    purge.set_defaults(handler=_cmd_purge)
    abandon = commands.add_parser("abandon", help="dead-letter one open oplog: never resumed again")
    abandon.add_argument("oplog_id")
    abandon.add_argument("--reason", required=True, help="why (kept with the oplog, shown by show)")
    abandon.add_argument("--force", action="store_true",
                         help="abandon it even while a live worker holds its lease (that run "
                              "then fails at its next journal write and sends nothing more)")
    abandon.set_defaults(handler=_cmd_abandon)
    for sub in (resume, listing, show, purge, abandon):
        sub.add_argument("--db", required=True, metavar="URL",
                         help="journal database URL: sqlite:///path/file.db or postgresql://…")
        add_debug_option(sub)
    send_command.add_arguments(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, build_parser().parse_args(argv))


def _open_journal(url: str) -> Journal:
    """The journal at ``url``, which must exist with the chttp tables (nothing is created)."""
    from chttp_client.journal import Journal

    engine = open_database(url)
    try:
        require_schema(engine, url)
    except BaseException:
        engine.dispose()
        raise
    journal = Journal(engine=engine, upgrade_schema=False)
    return journal


def _close(journal: Journal) -> None:
    journal.close()
    journal.engine.dispose()   # passed in by us, so not the journal's to dispose


# -- commands --------------------------------------------------------------------------


def _cmd_resume(args: argparse.Namespace) -> int:
    journal = _open_journal(args.db)
    try:
        sys.path.insert(0, "")
        for module in args.imports:
            _import(module)
        outcomes = (journal.resume_all(timeout=args.timeout) if not args.ids
                     else [_resume_one(journal, args.db, oplog_id) for oplog_id in args.ids])
    finally:
        _close(journal)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        detail = repr(outcome.value) if outcome.status == "done" else str(outcome.error)
        if outcome.status == "pending":
            detail = "still retrying: stopped, left open for the next resume (or abandon it)"
        if outcome.status == "refused" and not getattr(outcome.error, "registered", True):
            # No version of it at all: the module was not imported. Say that first; the
            # error's own text is about versions, which would send the reader astray.
            detail = (f"no @resumable {outcome.function} was registered: "
                      f"{_registration_hint(outcome.function, args.imports)}")
        print(f"{outcome.oplog_id}  {outcome.function} v{outcome.version}  "
              f"{outcome.status}  {detail}")
        if outcome.status == "refused" and not getattr(outcome.error, "registered", True):
            print(f"    no @resumable {outcome.function} was registered: "
                  f"{_registration_hint(outcome.function, args.imports)}")
    summary = ", ".join(f"{counts[status]} {status}" for status in _STATUSES if counts.get(status))
    print(f"{len(outcomes)} {'open ' if not args.ids else ''}oplog(s): {summary or 'nothing to do'}")
    troubles = [f"{counts['refused']} refused and left open"] if counts.get("refused") else []
    if counts.get("abandoned"):
        troubles.append(f"{counts['abandoned']} abandoned (never resumed again)")
    if counts.get(OPLOG_UNREADABLE):
        troubles.append(f"{counts[OPLOG_UNREADABLE]} unreadable, quarantined and left open "
                        f"({', '.join(unreadable_ids(outcomes))}: `{PROG} show` prints the raw "
                        f"record, `{PROG} abandon` ends it)")
    if counts.get("pending"):
        troubles.append(f"{counts['pending']} still pending after --timeout {args.timeout:g} s")
    if args.ids and counts.get("busy"):
        troubles.append(f"{counts['busy']} busy in another live process")
    if troubles:
        print(f"{PROG}: {', '.join(troubles)}: see above", file=sys.stderr)
        return EXIT_FAILURE
    return 0


#: The outcomes of ``resume``, in the order the summary counts them.
_STATUSES = ("done", "failed", "busy", "refused", OPLOG_UNREADABLE, "abandoned", "pending")


def _resume_one(journal: Journal, db: str, oplog_id: str) -> ResumeOutcome:
    """``resume --id``: one oplog, as ``resume_all()`` would report it (open or not).

    Unlike ``resume_all()`` a divergent oplog is not abandoned here: it is refused and
    left open (``abandon`` ends it). An oplog that is not there is one line, exit 1.
    """
    from chttp_client.codec import CodecError
    from chttp_client.errors import (
        JournalError,
        NonDeterminismError,
        OplogAbandonedError,
        OplogBusyError,
        UnknownFunctionError,
    )
    from chttp_client.journal import ResumeOutcome

    info = journal.store.get(oplog_id, strict=False)
    if info is None:
        raise CommandError(f"no oplog {oplog_id!r} in {shown_url(db)}",
                           f"`{PROG} list --all --db {shown_url(db)}` lists them")

    def outcome(status: str, value: Any = None, error: BaseException | None = None) -> ResumeOutcome:
        return ResumeOutcome(oplog_id, info.function, info.version, status, value=value, error=error)

    try:
        value = journal.resume(oplog_id)
    except CodecError as error:
        return outcome(OPLOG_UNREADABLE, error=error)
    except (UnknownFunctionError, NonDeterminismError) as error:
        return outcome("refused", error=error)
    except OplogBusyError as error:
        return outcome("busy", error=error)
    except OplogAbandonedError as error:
        return outcome("abandoned", error=error)
    except JournalError as error:
        raise CommandError(str(error)) from None
    except Exception as error:  # the function's own outcome, recorded
        return outcome("failed", error=error)
    return outcome("done", value=value)


def _registration_hint(function: str, imports: list[str]) -> str:
    module = function.rpartition(".")[0]
    if module == "__main__" or module.startswith("__main__."):
        return ("it was defined in a script run as __main__, a name no import can provide; "
                "resume it from that script (journal.resume_all()), and give new functions "
                "@resumable(journal, name=...)")
    if module in imports:
        return f"{module} was imported but did not register it (renamed? another version?)"
    return f"pass --import {module or 'MODULE'} (the module that defines it)"


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as missing:
        if missing.name is None or not module.startswith(missing.name):
            raise   # the module exists; one of its own imports is missing
        raise CommandError(f"cannot import {module!r} (--import)",
                           "run from the directory that holds it, or fix PYTHONPATH",
                           status=EXIT_USAGE) from None


def _cmd_list(args: argparse.Namespace) -> int:
    journal = _open_journal(args.db)
    try:
        infos = journal.list() if args.all else journal.list_open()
        # Open oplogs are the ones a resume would replay: their steps are checked too.
        bad_steps = journal.store.unreadable_steps(
            [info.id for info in infos if info.state == OPLOG_OPEN and info.unreadable is None])
        unacked = journal.unacknowledged([info.id for info in infos if info.state != OPLOG_OPEN])
    finally:
        _close(journal)
    for info in infos:
        unreadable = info.unreadable or bad_steps.get(info.id)
        status = OPLOG_UNREADABLE if unreadable is not None and info.state != "abandoned" else info.state
        line = (f"{info.id}  {status:6}  {info.function} v{info.version}  "
                f"{info.created_at.isoformat()}  {info.lease_owner or '-'}")
        if status == OPLOG_UNREADABLE:
            line += f"  {unreadable}"
        if info.id in unacked:  # purge keeps it until the horizon (or resume acknowledges it)
            line += "  unacked"
        print(line)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from chttp_client.codec import CodecError

    journal = _open_journal(args.db)
    try:
        try:
            info = journal.store.get(args.oplog_id)
        except CodecError as error:
            return _show_unreadable(journal, args.oplog_id, error)
    finally:
        _close(journal)
    if info is None:
        raise CommandError(f"no oplog {args.oplog_id!r} in {shown_url(args.db)}",
                           f"`{PROG} list --all --db {shown_url(args.db)}` lists them")
    print(f"oplog     {info.id}\nfunction  {info.function} v{info.version}\nstate     {info.state}")
    print(f"arguments {json.dumps(info.arguments, default=repr)}")
    if info.abandoned_reason is not None:
        print(f"abandoned {info.abandoned_reason}")
    if info.result is not None:
        print(f"result    {json.dumps(info.result)}")
    for step in info.steps:
        print(_step_line(step))
    return 0


def _show_unreadable(journal: Journal, oplog_id: str, error: Exception) -> int:
    """``show`` of an oplog with an unreadable record: the rows as stored, and why (exit 1)."""
    raw = journal.store.raw(oplog_id)
    assert raw is not None  # the store just read it
    row, steps = raw
    print(f"oplog     {oplog_id}\nfunction  {row['function']} v{row['version']}\n"
          f"state     {OPLOG_UNREADABLE} (stored: {row['state']})\nerror     {error}")
    print("raw row")
    for name, value in row.items():
        print(f"  {name:18} {value!r}")
    for step in steps:
        print(f"raw step {step['number']}")
        for name, value in step.items():
            if name not in ("oplog_id", "number"):
                print(f"  {name:18} {value!r}")
    print(f"{PROG}: oplog {oplog_id} is unreadable ({error}): it is quarantined, never run; "
          f"fix the record, or `{PROG} abandon` it", file=sys.stderr)
    return EXIT_FAILURE


def _step_line(step: Any) -> str:
    line = f"  {step.number:3}  {step.kind:7}  {step.state:8}  {step.name}"
    if step.message_id:
        status = step.response["status"] if step.response else "-"
        acked = "acked" if step.acknowledged_at else "unacked"
        line += f"  id={step.message_id} status={status} {acked}"
    elif step.outcome is not None:
        line += f"  {json.dumps(step.outcome)[:120]}"
    return line


def _cmd_abandon(args: argparse.Namespace) -> int:
    from chttp_client.errors import JournalError

    journal = _open_journal(args.db)
    try:
        holder = journal.store.live_lease(args.oplog_id)
        if holder is not None and not args.force:
            until = holder.expires_at.isoformat() if holder.expires_at else "?"
            raise CommandError(
                f"oplog {args.oplog_id} is being run by {holder.owner} (lease until {until}, "
                "database clock); nothing changed",
                "pass --force to abandon it anyway: that run then fails at its next journal "
                "write with OplogAbandonedError and sends nothing more")
        journal.abandon(args.oplog_id, args.reason)
    except JournalError as error:
        raise CommandError(str(error), f"`{PROG} list --all --db {shown_url(args.db)}` "
                           "shows every oplog and its state") from None
    finally:
        _close(journal)
    print(f"oplog {args.oplog_id} abandoned: {args.reason}")
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    journal = _open_journal(args.db)
    try:
        older_than, horizon = timedelta(days=args.older_than_days), timedelta(days=args.horizon_days)
        deleted = journal.purge(older_than=older_than, horizon=horizon, batch_size=args.batch_size)
        kept = journal.purge_kept(older_than=older_than, horizon=horizon)
    finally:
        _close(journal)
    print(f"{deleted} oplog(s) purged")
    if kept["unacknowledged"]:
        print(f"{kept['unacknowledged']} finished oplog(s) kept: an answer not acknowledged yet "
              f"(kept until --horizon-days {args.horizon_days}, or until `{PROG} resume` "
              "acknowledges it; `list --all` marks them unacked)")
    if kept["horizon"]:
        print(f"{kept['horizon']} receiver handler oplog(s) kept: within --horizon-days "
              f"{args.horizon_days} (the receiver may still replay their messages)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
