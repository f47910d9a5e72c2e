"""The audit must catch what exactly-once forbids: a duplicate, a loss, a negative balance.

Each case runs a calm demo (no chaos, a handful of transfers), checks that its audit
passes, then damages one database the way a broken protocol would and audits again.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import insert, select, update

from chttp_core.db import make_engine
from chttp_examples.escrow import escrow, ledger
from chttp_examples.escrow.audit import audit
from chttp_examples.escrow.demo import Databases, run_demo


@pytest.fixture(scope="module")
def calm_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("calm") / "demo"
    report = run_demo(transfers=6, kill_rate=0, seed=3, db_dir=directory, timeout=300)
    assert report.ok, report.render()
    return directory, report


@pytest.fixture
def damaged(calm_run, tmp_path):
    """A private copy of the calm run's databases, to damage."""
    import shutil

    source, _ = calm_run
    target = tmp_path / "copy"
    shutil.copytree(source, target)
    return Databases.sqlite(target)


def _audit(databases):
    return audit(databases.ledgers, databases.escrow, requested=6)


def _first_operation(url, kind):
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return engine, connection.execute(
                select(ledger.operations).where(ledger.operations.c.kind == kind)
                .order_by(ledger.operations.c.seq)
            ).first()
    except BaseException:
        engine.dispose()
        raise


def test_the_calm_run_passes_and_reports(calm_run):
    _, report = calm_run
    assert report.audit.transfers == 6
    assert report.audit.total_before == report.audit.total_after
    assert sum(report.audit.states.values()) == 6
    assert "PASSED" in report.render()


def test_a_duplicated_withdraw_is_caught(damaged):
    engine, op = _first_operation(damaged.ledgers["A"], "withdraw")
    with engine.begin() as connection:
        connection.execute(insert(ledger.operations).values(
            transfer=op.transfer, kind=op.kind, account=op.account, amount=op.amount,
            message_id="a-second-delivery"))
        connection.execute(update(ledger.accounts).where(ledger.accounts.c.name == op.account)
                           .values(balance=ledger.accounts.c.balance - op.amount))
    engine.dispose()
    result = _audit(damaged)
    assert not result.ok
    assert result.total_after == result.total_before - op.amount
    assert any(f"transfer {op.transfer}" in failure and "2×withdraw" in failure
               for failure in result.failures)


def test_a_lost_deposit_is_caught(damaged):
    engine, op = _first_operation(damaged.ledgers["B"], "deposit")
    with engine.begin() as connection:
        connection.execute(ledger.operations.delete().where(ledger.operations.c.seq == op.seq))
    engine.dispose()
    result = _audit(damaged)
    assert any(f"{op.account} holds" in failure for failure in result.failures)
    assert any(f"transfer {op.transfer}" in failure for failure in result.failures)


def test_a_transfer_accepted_twice_is_caught(damaged):
    engine = make_engine(damaged.escrow)
    with engine.begin() as connection:
        row = connection.execute(select(escrow.transfers).limit(1)).first()
        connection.execute(insert(escrow.transfers).values(
            id="f" * 32, ref=row.ref, spec=row.spec, state="accepted"))
    engine.dispose()
    failures = _audit(damaged).failures
    assert any("more than once" in failure for failure in failures)
    assert any("never finished" in failure for failure in failures)


def test_a_refund_without_its_withdraw_is_caught(damaged):
    engine = make_engine(damaged.escrow)
    with engine.connect() as connection:
        row = connection.execute(select(escrow.transfers)
                                 .where(escrow.transfers.c.state == "completed")).first()
    engine.dispose()
    leg = json.loads(row.spec)["gather"][0]
    engine = make_engine(damaged.ledgers[leg["ledger"]])
    with engine.begin() as connection:
        connection.execute(insert(ledger.operations).values(
            transfer=row.id, kind="refund", account=leg["account"], amount=leg["amount"],
            message_id="made-up"))
    engine.dispose()
    assert any(f"transfer {row.id}" in failure for failure in _audit(damaged).failures)
