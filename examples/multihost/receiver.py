"""One receiver host: :class:`~.app.EffectsApp` behind ``CertifiedMiddleware``, under waitress.

::

    python -m chttp_examples.multihost.receiver --db URL --host ADDRESS --port P [--threads N]

Run inside a host's namespace by :mod:`.topology`. It prints one ``serving`` line once
listening. The engine is made here rather than by the middleware so that its pool fits
the deployment: ``pool_size`` equal to the worker threads (each thread holds at most
one connection, for one request's transaction), ``pool_pre_ping`` so that a connection
broken by a failover or a PgBouncer restart is replaced before a request uses it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.multihost.receiver")
    parser.add_argument("--db", required=True, help="message store URL (PgBouncer or multi-host)")
    parser.add_argument("--host", required=True, help="listen address")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--claim-timeout", type=float, default=2.0)
    args = parser.parse_args(argv)

    import faulthandler
    import logging

    import waitress

    # ``kill -USR1`` writes every thread's stack to stderr (the host's log): what a
    # stalled receiver's workers are waiting on, without a debugger on the host.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    # The store's warnings (unreachable, 503) go to stderr, which the topology keeps per host.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from chttp_examples.multihost.app import EffectsApp
    from chttp_examples.multihost.inflight import InFlight

    from chttp_core.db import make_engine
    from chttp_server import CertifiedMiddleware

    engine = make_engine(args.db, pool_size=args.threads, max_overflow=0, pool_timeout=5)
    # InFlight: GET /_inflight counts the requests still inside (stuck workers after a fault).
    app = InFlight(CertifiedMiddleware(EffectsApp(), engine=engine, claim_timeout=args.claim_timeout))
    server = waitress.create_server(app, host=args.host, port=args.port, threads=args.threads,
                                    channel_timeout=30)
    print(f"serving on http://{args.host}:{server.effective_port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run()
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
