"""The options of ``chttp-server demo``, kept apart so that parsing them loads nothing else.

``chttp_server.cli`` never imports the examples while building its own parser: when
``chttp-server demo …`` runs, it imports this module, builds the demo's parser with
:func:`add_arguments` and calls :func:`run`, which loads the demo itself.

Exit status: 0 the audit passed; 1 it found something wrong; 2 a usage error; 3 the
time limit came first and nothing was wrong (transfers still in flight).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run", "DEFAULT_TRANSFERS", "DEFAULT_KILL_RATE"]

#: Sized to finish in about a minute on a 2-core machine.
DEFAULT_TRANSFERS = 100
DEFAULT_KILL_RATE = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transfers", type=int, default=DEFAULT_TRANSFERS,
                        help=f"transfers the client submits (default: {DEFAULT_TRANSFERS})")
    parser.add_argument("--kill-rate", type=float, default=DEFAULT_KILL_RATE,
                        help="mean SIGKILLs per second over all processes while they run, "
                             f"0 for none (default: {DEFAULT_KILL_RATE})")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the transfers and the chaos (default: random, printed)")
    parser.add_argument("--db-dir", type=Path, default=None,
                        help="an empty directory for the databases and logs, kept afterwards "
                             "(default: a temporary one, removed when the audit passes)")
    parser.add_argument("--postgres", action="store_true",
                        help="run every service against a throwaway PostgreSQL cluster "
                             "(needs the PostgreSQL server binaries)")
    parser.add_argument("--console", action="store_true",
                        help="open the web console on the escrow's messages and oplogs while "
                             "the demo runs, and print its URL")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="stop after this many seconds and audit what was done; "
                             "exit status 3 if nothing was wrong (default: 600)")


def run(args: argparse.Namespace) -> int:
    """Run the demo; the exit status is described in the module docstring."""
    from chttp_core.commandline import require_extra
    from chttp_examples.escrow import demo

    if args.console:   # one line naming the extra, before any service starts
        require_extra("jinja2", "chttp-server demo --console")
    return demo.run(args)
