"""``chttp-server purge``: delete expired messages in bounded batches, beside live traffic.

::

    chttp-server purge --db URL [--batch-size N] [--pause SECONDS] [--share FRACTION]

The options and the command of :mod:`chttp_server.cli`'s ``purge``, kept here as the
console's are in :mod:`chttp_server.console.cli`: :func:`add_arguments` adds them to the
subcommand's parser (which already has ``--db``), :func:`run` is its handler. The
deleting itself is :func:`chttp_server.purge.purge_expired` (through
:meth:`MessageStore.purge <chttp_server.store.MessageStore.purge>`), which says how
``--pause`` and ``--share`` pace it.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from chttp_core.commandline import non_negative, open_database, positive_int, require_schema

__all__ = ["add_arguments", "run"]


def add_arguments(purge: argparse.ArgumentParser) -> None:
    """Add the purge's pacing options to its parser, and :func:`run` as its handler."""
    purge.add_argument("--batch-size", type=positive_int, default=1000, metavar="N",
                       help="messages deleted per transaction (default: %(default)s)")
    purge.add_argument("--pause", type=non_negative("seconds"), default=0.0, metavar="SECONDS",
                       help="sleep between batches, leaving the database to live traffic "
                            "(default: %(default)s)")
    purge.add_argument("--share", type=_share, default=None, metavar="FRACTION",
                       help="pace the purge by what it observes: spend at most this fraction "
                            "of the time deleting (e.g. 0.2), each pause scaled from the batch "
                            "before it, so a busy store slows the purge down (default: flat out)")
    purge.set_defaults(handler=run)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a fraction above 0 and at most 1 (e.g. 0.2), not {text}")
    return value


def run(args: argparse.Namespace) -> int:
    """Delete the expired messages of ``--db``; print how many."""
    from chttp_server.store import MessageStore

    engine = open_database(args.db)
    try:
        require_schema(engine, args.db)
        # Retention is already baked into each row's expires_at.
        store = MessageStore(engine, retention=timedelta(days=15), claim_timeout=5.0)
        deleted = store.purge(batch_size=args.batch_size, pause=args.pause, share=args.share)
    finally:
        engine.dispose()
    print(f"purged {deleted} expired message(s)")
    return 0
