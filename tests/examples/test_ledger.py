"""The ledger applies each certified operation exactly once, and never goes negative."""

from __future__ import annotations

import json

import pytest
import webtest
from sqlalchemy import select

from chttp_core.db import make_engine
from chttp_examples.escrow import ledger


@pytest.fixture
def ledger_app(db_url):
    ledger.init_ledger(db_url, {"alice": 100, "bob": 0})
    engine = make_engine(db_url)
    app = webtest.TestApp(ledger.make_app(db_url, engine=engine))
    yield app, engine
    engine.dispose()


def _post(app, path, body, message_id, status="*"):
    return app.post(path, json.dumps(body), content_type="application/json",
                    headers={"X-Message-ID": message_id}, status=status)


def _rows(engine, table):
    with engine.connect() as connection:
        return connection.execute(select(table)).all()


def test_a_retried_withdraw_is_applied_once(ledger_app):
    app, engine = ledger_app
    first = _post(app, "/accounts/alice/withdraw", {"transfer": "t1", "amount": 30}, "m-1")
    again = _post(app, "/accounts/alice/withdraw", {"transfer": "t1", "amount": 30}, "m-1")
    assert first.status_int == 200 and first.json["balance"] == 70
    assert again.body == first.body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert app.get("/accounts").json == {"alice": 70, "bob": 0}
    ops = _rows(engine, ledger.operations)
    assert [(op.transfer, op.kind, op.account, op.amount, op.message_id) for op in ops] == [
        ("t1", "withdraw", "alice", 30, "m-1")]


def test_an_uncovered_withdraw_is_a_stored_402_and_changes_nothing(ledger_app):
    app, engine = ledger_app
    refused = _post(app, "/accounts/bob/withdraw", {"transfer": "t2", "amount": 1}, "m-2")
    replay = _post(app, "/accounts/bob/withdraw", {"transfer": "t2", "amount": 1}, "m-2")
    assert refused.status_int == 402
    assert refused.content_type == "application/problem+json"
    assert refused.json["type"] == "insufficient-funds"
    assert replay.status_int == 402 and replay.headers["Idempotent-Replayed"] == "true"
    assert app.get("/accounts/bob").json == {"account": "bob", "balance": 0}
    assert [(op.kind, op.amount) for op in _rows(engine, ledger.operations)] == [("refused", 1)]


def test_deposit_and_refund_add(ledger_app):
    app, _ = ledger_app
    _post(app, "/accounts/bob/deposit", {"transfer": "t3", "amount": 5}, "m-3")
    _post(app, "/accounts/bob/refund", {"transfer": "t4", "amount": 2}, "m-4")
    assert app.get("/accounts/bob").json["balance"] == 7


@pytest.mark.parametrize("body", [
    pytest.param({"transfer": "t", "amount": 0}, id="zero"),
    pytest.param({"transfer": "t", "amount": -5}, id="negative"),
    pytest.param({"transfer": 3, "amount": 5}, id="transfer-not-a-string"),
    pytest.param({"amount": 5}, id="no-transfer"),
])
def test_malformed_legs_are_400(ledger_app, body):
    app, engine = ledger_app
    assert _post(app, "/accounts/alice/withdraw", body, "m-bad").status_int == 400
    assert _rows(engine, ledger.operations) == []


def test_unknown_account_is_404_and_a_post_needs_an_id(ledger_app):
    app, _ = ledger_app
    assert _post(app, "/accounts/zoe/deposit", {"transfer": "t", "amount": 1}, "m-5").status_int == 404
    response = app.post("/accounts/alice/deposit", json.dumps({"transfer": "t", "amount": 1}),
                        content_type="application/json", status=400)
    assert response.json["type"].endswith("message-id-required")


def test_init_ledger_does_not_reopen_accounts(db_url):
    ledger.init_ledger(db_url, {"alice": 100})
    ledger.init_ledger(db_url, {"alice": 999, "mallory": 5})
    engine = make_engine(db_url)
    try:
        assert [(row.name, row.balance) for row in _rows(engine, ledger.accounts)] == [("alice", 100)]
    finally:
        engine.dispose()
