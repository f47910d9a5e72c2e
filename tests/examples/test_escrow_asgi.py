"""The escrow's ASGI twins in one process: the async driver moves every leg once, crashes survived.

The ledgers and the escrow are the Starlette apps of ``chttp-server demo --asgi`` behind
``chttp_server.asgi.CertifiedMiddleware``, each on its own SQLite file through
aiosqlite, reached through one ``httpx.ASGITransport`` that routes by host name — so the
``async def`` driver's certified sends cross the real ASGI middleware and the real
journal without sockets. Each call runs on an event loop of its own (as
``check_crash_resume`` does for every run), so the apps' engines pool nothing across
loops (``NullPool``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from sqlalchemy.pool import NullPool

from chttp_client import Journal
from chttp_client.testing import check_crash_resume
from chttp_examples.escrow import escrow, escrow_asgi, ledger, ledger_asgi
from chttp_examples.escrow.audit import audit
from chttp_server.asgi import make_async_engine

LEDGERS = {"A": "http://ledger-a", "B": "http://ledger-b"}


class Services:
    def __init__(self, tmp_path):
        self.ledger_urls = {name: f"sqlite:///{tmp_path / f'ledger-{name}.db'}" for name in LEDGERS}
        self.escrow_url = f"sqlite:///{tmp_path / 'escrow.db'}"
        ledger.init_ledger(self.ledger_urls["A"], {"alice": 100, "bob": 0})
        ledger.init_ledger(self.ledger_urls["B"], {"dave": 100, "erin": 0})
        escrow.init_escrow(self.escrow_url)
        self.apps: dict[str, Any] = {
            f"ledger-{name.lower()}": ledger_asgi.make_app(url, engine=_engine(url))
            for name, url in self.ledger_urls.items()
        }
        self.journal = Journal(self.escrow_url,
                               async_transport=httpx.ASGITransport(app=self._route))
        self.apps["escrow"], self.driver = escrow_asgi.make_app(
            self.escrow_url, LEDGERS, escrow_url="http://escrow",
            engine=_engine(self.escrow_url), journal=self.journal)
        self._ids = 0

    async def _route(self, scope, receive, send):
        host = dict(scope["headers"])[b"host"].decode().split(":")[0]
        await self.apps[host](scope, receive, send)

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self._route)) as client:
                return await client.request(method, url, **options)

        return asyncio.run(call())

    def submit(self, ref, gather, distribute, *, message_id=None):
        self._ids += 1
        body = {"ref": ref, "gather": gather, "distribute": distribute}
        return self.request("POST", "http://escrow/transfers", json=body,
                            headers={"X-Message-ID": message_id or f"client-{self._ids}"})

    def drive(self, transfer_id: str) -> str:
        return asyncio.run(self.driver.drive(transfer_id))

    def balances(self):
        return {name: self.request("GET", f"{url}/accounts").json() for name, url in LEDGERS.items()}

    def audit(self, requested):
        return audit(self.ledger_urls, self.escrow_url, requested=requested)

    def close(self):
        self.journal.close()


def _engine(url: str) -> Any:
    return make_async_engine(url, poolclass=NullPool)


@pytest.fixture
def services(tmp_path):
    services = Services(tmp_path)
    yield services
    services.close()


def leg(ledger_name, account, amount):
    return {"ledger": ledger_name, "account": account, "amount": amount}


def test_a_transfer_moves_money_once_and_a_second_driver_is_refused(services):
    answer = services.submit(0, [leg("A", "alice", 30), leg("B", "dave", 20)],
                             [leg("A", "bob", 10), leg("B", "erin", 40)])
    assert answer.status_code == 201
    transfer = answer.json()["id"]
    assert answer.headers["location"] == f"/transfers/{transfer}"
    assert services.drive(transfer) == "completed"
    assert services.drive(transfer) == "driven-elsewhere"
    assert services.balances() == {"A": {"alice": 70, "bob": 10}, "B": {"dave": 80, "erin": 40}}
    assert services.request("GET", f"http://escrow/transfers/{transfer}").json()["state"] == "completed"
    oplogs = services.journal.list()
    assert {oplog.function for oplog in oplogs} == {escrow_asgi.DRIVER_NAME}
    result = services.audit(requested=1)
    assert result.ok, result.failures


def test_a_refused_gather_refunds_what_was_gathered(services):
    transfer = services.submit(0, [leg("A", "alice", 30), leg("B", "dave", 500)],
                               [leg("A", "bob", 265), leg("B", "erin", 265)]).json()["id"]
    assert services.drive(transfer) == "refunded"
    assert services.balances() == {"A": {"alice": 100, "bob": 0}, "B": {"dave": 100, "erin": 0}}
    state = services.request("GET", f"http://escrow/transfers/{transfer}").json()
    assert state["state"] == "refunded"
    assert state["detail"]["refused"]["status"] == 402
    assert state["detail"]["refused"]["answer"]["type"] == "insufficient-funds"
    assert state["detail"]["refunded"] == [leg("A", "alice", 30)]
    result = services.audit(requested=1)
    assert result.ok, result.failures


def test_a_retried_submission_creates_one_transfer(services):
    gather, distribute = [leg("A", "alice", 1)], [leg("B", "erin", 1)]
    first = services.submit(0, gather, distribute, message_id="same")
    again = services.submit(0, gather, distribute, message_id="same")
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert services.request("GET", "http://escrow/transfers").json() == {
        "total": 1, "states": {"accepted": 1}}


@pytest.mark.parametrize("body", [
    pytest.param({"ref": 0, "gather": [leg("A", "alice", 2)], "distribute": [leg("B", "erin", 1)]},
                 id="amounts-differ"),
    pytest.param({"ref": 0, "gather": [leg("C", "zed", 1)], "distribute": [leg("B", "erin", 1)]},
                 id="unknown-ledger"),
    pytest.param({"gather": [leg("A", "alice", 1)], "distribute": [leg("B", "erin", 1)]}, id="no-ref"),
])
def test_a_malformed_transfer_is_400(services, body):
    answer = services.request("POST", "http://escrow/transfers", content=json.dumps(body),
                              headers={"X-Message-ID": "bad", "Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert services.request("GET", "http://escrow/transfers").json()["total"] == 0


def test_a_ledger_post_without_an_id_is_refused_and_changes_nothing(services):
    answer = services.request("POST", "http://ledger-a/accounts/alice/withdraw",
                              json={"transfer": "t", "amount": 5})
    assert answer.status_code == 400
    assert services.balances()["A"] == {"alice": 100, "bob": 0}


@pytest.mark.parametrize("amount,outcome", [
    pytest.param(20, "completed", id="completed"),
    pytest.param(500, "refunded", id="refunded"),
])
def test_the_async_driver_survives_a_crash_at_every_step(services, amount, outcome):
    transfer = services.submit(0, [leg("A", "alice", 30), leg("B", "dave", amount)],
                               [leg("A", "bob", 15), leg("B", "erin", 15 + amount)]).json()["id"]
    report = check_crash_resume(services.driver.drive, transfer)
    assert report.outcome == {"value": outcome}
    assert report.failures == []
    assert len(report.cases) > 10
    # Dozens of crashed and resumed runs later, every leg still happened exactly once.
    result = services.audit(requested=1)
    assert result.ok, result.failures
