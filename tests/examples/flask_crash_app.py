"""The Flask order service with a view that stops after its commit, for the SIGKILL test.

``python -m tests.examples.flask_crash_app DB_URL HOLD_DIR``: serves on a free port and
prints ``serving on URL``. ``POST /orders/held`` adds an order and calls
``db.session.commit()``; while ``HOLD_DIR/hold`` exists it then drops ``reached`` and
waits, so the test can SIGKILL the process between the view's commit and the message's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from waitress.server import create_server

from chttp_examples.flask_orders import Order, create_app, db


def main(db_url: str, hold_dir: str) -> None:
    app = create_app(db_url)

    @app.post("/orders/held")
    def held():
        db.session.add(Order(item="held", quantity=1))
        db.session.commit()
        hold = Path(hold_dir) / "hold"
        if hold.exists():
            (Path(hold_dir) / "reached.tmp").write_text("x")
            (Path(hold_dir) / "reached.tmp").replace(Path(hold_dir) / "reached")
            while hold.exists():
                time.sleep(0.05)
        return {"held": True}, 201

    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    print(f"serving on http://127.0.0.1:{server.effective_port}", flush=True)
    server.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
