"""examples/fastapi_orders: a view's awaited certified send survives the view's failure.

Runs the example's own walkthrough (``python -m chttp_examples.fastapi_orders``: two
uvicorn services) and reads both databases afterwards.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_every_order_is_written_once_and_shipped_once(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "chttp_examples.fastapi_orders",
                          "--db-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pen, failing after shipping: 503" in run.stdout
    assert "PASSED" in run.stdout
    with sqlite3.connect(tmp_path / "orders.db") as orders:
        assert orders.execute("SELECT item, shipment FROM orders ORDER BY id").fetchall() == [
            ("book", 1), ("pen", 2)]
    with sqlite3.connect(tmp_path / "shipping.db") as shipping:
        shipments = shipping.execute("SELECT item, order_message FROM shipments").fetchall()
        # The pen was shipped once, although its order view ran twice: the retry re-sent
        # the same message id and the shipping service answered from its store.
        assert [item for item, _ in shipments] == ["book", "pen"]
        assert len({message for _, message in shipments}) == 2
        assert shipping.execute("SELECT count(*) FROM chttp_messages").fetchone() == (2,)
