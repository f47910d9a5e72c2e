"""The escrow's driver in one process: every leg once, a second driver refused, crashes survived.

The three services run as WSGI apps behind one ``httpx.WSGITransport`` that routes by
host name, each on its own SQLite file, so the driver's certified sends cross the real
middleware and the real journal without sockets.
"""

from __future__ import annotations

import json

import httpx
import pytest
import webtest

from chttp_client import Journal
from chttp_client.testing import check_crash_resume
from chttp_examples.escrow import escrow, ledger
from chttp_examples.escrow.audit import audit

LEDGERS = {"A": "http://ledger-a", "B": "http://ledger-b"}


class Services:
    def __init__(self, tmp_path):
        self.ledger_urls = {name: f"sqlite:///{tmp_path / f'ledger-{name}.db'}" for name in LEDGERS}
        self.escrow_url = f"sqlite:///{tmp_path / 'escrow.db'}"
        ledger.init_ledger(self.ledger_urls["A"], {"alice": 100, "bob": 0})
        ledger.init_ledger(self.ledger_urls["B"], {"dave": 100, "erin": 0})
        escrow.init_escrow(self.escrow_url)
        apps = {
            "ledger-a": ledger.make_app(self.ledger_urls["A"]),
            "ledger-b": ledger.make_app(self.ledger_urls["B"]),
        }
        self.journal = Journal(self.escrow_url, transport=httpx.WSGITransport(app=self._route))
        apps["escrow"], self.driver = escrow.make_app(
            self.escrow_url, LEDGERS, escrow_url="http://escrow", journal=self.journal)
        self.apps = apps
        self.escrow = webtest.TestApp(apps["escrow"])
        self.ledgers = {name: webtest.TestApp(apps[f"ledger-{name.lower()}"]) for name in LEDGERS}
        self._ids = 0

    def _route(self, environ, start_response):
        return self.apps[environ["HTTP_HOST"].split(":")[0]](environ, start_response)

    def submit(self, ref, gather, distribute):
        self._ids += 1
        body = {"ref": ref, "gather": gather, "distribute": distribute}
        response = self.escrow.post("/transfers", json.dumps(body), content_type="application/json",
                                    headers={"X-Message-ID": f"client-{self._ids}"})
        assert response.status_int == 201
        return response.json["id"]

    def balances(self):
        return {name: app.get("/accounts").json for name, app in self.ledgers.items()}

    def audit(self, requested):
        return audit(self.ledger_urls, self.escrow_url, requested=requested)

    def close(self):
        self.journal.close()


@pytest.fixture
def services(tmp_path):
    services = Services(tmp_path)
    yield services
    services.close()


def leg(ledger_name, account, amount):
    return {"ledger": ledger_name, "account": account, "amount": amount}


def test_a_transfer_moves_money_once_and_a_second_driver_is_refused(services):
    transfer = services.submit(0, [leg("A", "alice", 30), leg("B", "dave", 20)],
                               [leg("A", "bob", 10), leg("B", "erin", 40)])
    assert services.driver.drive(transfer) == "completed"
    assert services.driver.drive(transfer) == "driven-elsewhere"
    assert services.balances() == {"A": {"alice": 70, "bob": 10}, "B": {"dave": 80, "erin": 40}}
    assert services.escrow.get(f"/transfers/{transfer}").json["state"] == "completed"
    result = services.audit(requested=1)
    assert result.ok, result.failures


def test_a_refused_gather_refunds_what_was_gathered(services):
    transfer = services.submit(0, [leg("A", "alice", 30), leg("B", "dave", 500)],
                               [leg("A", "bob", 265), leg("B", "erin", 265)])
    assert services.driver.drive(transfer) == "refunded"
    assert services.balances() == {"A": {"alice": 100, "bob": 0}, "B": {"dave": 100, "erin": 0}}
    state = services.escrow.get(f"/transfers/{transfer}").json
    assert state["state"] == "refunded"
    assert state["detail"]["refused"]["status"] == 402
    assert state["detail"]["refunded"] == [leg("A", "alice", 30)]
    result = services.audit(requested=1)
    assert result.ok, result.failures


def test_a_retried_submission_creates_one_transfer(services):
    body = json.dumps({"ref": 0, "gather": [leg("A", "alice", 1)], "distribute": [leg("B", "erin", 1)]})
    first = services.escrow.post("/transfers", body, content_type="application/json",
                                 headers={"X-Message-ID": "same"})
    again = services.escrow.post("/transfers", body, content_type="application/json",
                                 headers={"X-Message-ID": "same"})
    assert again.json == first.json
    assert services.escrow.get("/transfers").json == {"total": 1, "states": {"accepted": 1}}


@pytest.mark.parametrize("body", [
    pytest.param({"ref": 0, "gather": [leg("A", "alice", 2)], "distribute": [leg("B", "erin", 1)]},
                 id="amounts-differ"),
    pytest.param({"ref": 0, "gather": [leg("C", "zed", 1)], "distribute": [leg("B", "erin", 1)]},
                 id="unknown-ledger"),
    pytest.param({"ref": 0, "gather": [], "distribute": []}, id="no-legs"),
    pytest.param({"gather": [leg("A", "alice", 1)], "distribute": [leg("B", "erin", 1)]}, id="no-ref"),
])
def test_a_malformed_transfer_is_400(services, body):
    services.escrow.post("/transfers", json.dumps(body), content_type="application/json",
                         headers={"X-Message-ID": "bad"}, status=400)
    assert services.escrow.get("/transfers").json["total"] == 0


@pytest.mark.parametrize("amount,outcome", [
    pytest.param(20, "completed", id="completed"),
    pytest.param(500, "refunded", id="refunded"),
])
def test_the_driver_survives_a_crash_at_every_step(services, amount, outcome):
    transfer = services.submit(0, [leg("A", "alice", 30), leg("B", "dave", amount)],
                               [leg("A", "bob", 15), leg("B", "erin", 15 + amount)])
    report = check_crash_resume(services.driver.drive, transfer)
    assert report.outcome == {"value": outcome}
    assert report.failures == []
    assert len(report.cases) > 10
    # Dozens of crashed and resumed runs later, every leg still happened exactly once.
    result = services.audit(requested=1)
    assert result.ok, result.failures
