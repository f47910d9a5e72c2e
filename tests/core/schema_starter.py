"""One process starting on a (fresh) database through one schema entry point.

Run by ``test_schema_race.py`` as ``python -m tests.core.schema_starter ENTRY URL GO``:
it imports everything first, says ``ready``, then waits for the file ``GO`` to exist, so
that all the processes of a test reach the schema set-up at the same moment. It prints
``started`` and exits 0, or prints the traceback and exits 1.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, Callable


def _prepare(entry: str, url: str) -> Callable[[], None]:
    """Import what ``entry`` needs (before "ready"); return the start-up to run at "go"."""
    if entry in ("journal-ensure", "journal-resume"):
        from chttp_client import Journal

        def journal() -> None:
            with Journal(url) as opened:
                if entry == "journal-ensure":
                    opened.ensure_schema()
                else:
                    opened.resume_all()
        return journal
    if entry == "middleware":
        from chttp_server import CertifiedMiddleware

        return lambda: CertifiedMiddleware(_app, db_url=url, upgrade_schema=True).engine.dispose()
    if entry == "cli":
        from chttp_server import cli

        def command() -> None:
            if cli.main(["db", "upgrade", "--db", url]) != 0:
                raise SystemExit("chttp-server db upgrade failed")
        return command
    raise SystemExit(f"unknown entry point {entry!r}")


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def main() -> int:
    entry, url, go = sys.argv[1:4]
    start = _prepare(entry, url)
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            print("never told to go", flush=True)
            return 1
        time.sleep(0.005)
    try:
        start()
    except BaseException:
        traceback.print_exc(file=sys.stdout)
        return 1
    print("started", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
