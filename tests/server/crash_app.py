"""The application ``test_crash`` serves with ``chttp-server serve`` and kills mid-handler.

Its handler writes in two halves through the shared transaction. While the file
``hold`` exists in ``$CHTTP_TEST_HOLD_DIR``, it stops between the halves, drops a
``reached`` file so the test knows it is mid-transaction, and waits there until the
process is killed. A half-written effect would show as an unequal count of halves.
With ``?end=COMMIT`` the handler first sends ``COMMIT`` itself (a handler that ends the
message's transaction: tests/server/test_handler_ends_transaction.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from chttp_server import Resource

from tests.server.apps import record


class Crashable(Resource):
    def handle_post(self, req):
        record(req, "first-half")
        if req.params.get("end"):
            req.chttp.connection.exec_driver_sql(req.params["end"])
        hold_dir = os.environ.get("CHTTP_TEST_HOLD_DIR")
        if hold_dir and (Path(hold_dir) / "hold").exists():
            # Written aside, then renamed: the test must never see an empty file.
            (Path(hold_dir) / "reached.tmp").write_text(str(os.getpid()))
            os.replace(Path(hold_dir) / "reached.tmp", Path(hold_dir) / "reached")
            while (Path(hold_dir) / "hold").exists():
                time.sleep(0.05)
        record(req, "second-half")
        return {"message_id": req.chttp.message_id, "pid": os.getpid(), "body": req.text}


app = Crashable
