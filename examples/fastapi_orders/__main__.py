"""``python -m chttp_examples.fastapi_orders``: both services under uvicorn, and a retry.

Starts the shipping and order services on free loopback ports (SQLite files in a
temporary directory, or ``--db-dir``), then, as a sender would:

1. orders a book with an ``X-Message-ID``: one order, one shipment;
2. sends the same message again: the stored answer, nothing new;
3. orders a pen whose view fails *after* shipping (``?fail_after_shipping=true``,
   answered 503 and rolled back), then retries it without the failure: the order is
   written once, and the shipment re-sent with the same id is answered from the
   shipping service's store — one shipment, not two.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from chttp_server.testing import free_port


def _start(module: str, port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"chttp_examples.fastapi_orders.{module}:app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **env}, cwd=cwd)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{module} did not start")
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=2)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{module} did not start within 60 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.fastapi_orders",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--db-dir", type=Path, help="keep the databases here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        directory = (args.db_dir or Path(scratch)).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        shipping_port, orders_port = free_port(), free_port()
        env = {
            "SHIPPING_DB": f"sqlite+aiosqlite:///{directory / 'shipping.db'}",
            "ORDERS_DB": f"sqlite+aiosqlite:///{directory / 'orders.db'}",
            "ORDERS_JOURNAL": f"sqlite:///{directory / 'orders-outgoing.db'}",
            "SHIPPING_URL": f"http://127.0.0.1:{shipping_port}",
        }
        services = [_start("shipping", shipping_port, env, directory)]
        try:
            services.append(_start("orders", orders_port, env, directory))
            orders = f"http://127.0.0.1:{orders_port}"
            book = {"X-Message-ID": str(uuid.uuid4())}
            first = httpx.post(f"{orders}/orders", json={"item": "book"}, headers=book, timeout=60)
            again = httpx.post(f"{orders}/orders", json={"item": "book"}, headers=book, timeout=60)
            print(f"book: {first.status_code} {first.json()}")
            print(f"book again: {again.status_code} replayed={again.headers.get('idempotent-replayed')}")
            pen = {"X-Message-ID": str(uuid.uuid4())}
            failed = httpx.post(f"{orders}/orders", params={"fail_after_shipping": "true"},
                                json={"item": "pen"}, headers=pen, timeout=60)
            print(f"pen, failing after shipping: {failed.status_code} (rolled back)")
            retried = httpx.post(f"{orders}/orders", json={"item": "pen"}, headers=pen, timeout=60)
            print(f"pen, retried: {retried.status_code} {retried.json()}")
            order_count = httpx.get(f"{orders}/orders/count", timeout=30).json()["count"]
            shipment_count = httpx.get(f"{env['SHIPPING_URL']}/shipments/count", timeout=30).json()["count"]
            print(f"orders {order_count}, shipments {shipment_count}")
            ok = (order_count, shipment_count) == (2, 2) and again.content == first.content
            print("PASSED: every order written once and shipped once" if ok else "FAILED")
            return 0 if ok else 1
        finally:
            for service in services:
                service.terminate()
                service.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
