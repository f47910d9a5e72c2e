"""``python -m chttp_examples.flask_orders --db URL [--port N]``: serve it with waitress.

Prints ``serving on http://host:port`` once the socket listens (the tests read it).
"""

from __future__ import annotations

import argparse
import sys

from waitress.server import create_server

from chttp_examples.flask_orders import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.flask_orders")
    parser.add_argument("--db", required=True, help="database URL (orders and messages)")
    parser.add_argument("--shipping-url", default="", help="base URL of the shipping service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    app = create_app(args.db, shipping_url=args.shipping_url)
    server = create_server(app, host=args.host, port=args.port, threads=args.threads)
    print(f"serving on http://{args.host}:{server.effective_port}", flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
