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
from chttp_examples.escrow.demo import EXIT_UNFINISHED, EXIT_WRONG, Databases, DemoReport, run_demo


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


# -- a run stopped by its time limit: unfinished is not wrong ---------------------------


def _rewind_to_distributing(databases):
    """Make one completed transfer look as if it was killed mid-way: gathered, not paid out.

    Its deposits are removed (and their money taken back off the balances) and its state
    set to ``distributing``: what the databases hold at the instant before the deposits.
    Returns the transfer id and the money the escrow now holds for it.
    """
    engine = make_engine(databases.escrow)
    with engine.begin() as connection:
        row = connection.execute(select(escrow.transfers)
                                 .where(escrow.transfers.c.state == "completed")).first()
        connection.execute(update(escrow.transfers).where(escrow.transfers.c.id == row.id)
                           .values(state="distributing"))
    engine.dispose()
    held = 0
    for url in databases.ledgers.values():
        engine = make_engine(url)
        with engine.begin() as connection:
            deposits = connection.execute(select(ledger.operations).where(
                ledger.operations.c.transfer == row.id, ledger.operations.c.kind == "deposit")).all()
            for op in deposits:
                held += op.amount
                connection.execute(ledger.operations.delete().where(ledger.operations.c.seq == op.seq))
                connection.execute(update(ledger.accounts).where(ledger.accounts.c.name == op.account)
                                   .values(balance=ledger.accounts.c.balance - op.amount))
        engine.dispose()
    assert held > 0
    return row.id, held


def test_a_transfer_in_flight_is_unfinished_not_wrong(damaged):
    transfer, held = _rewind_to_distributing(damaged)
    cut_off = audit(damaged.ledgers, damaged.escrow, requested=6, finished=False)
    assert cut_off.ok, cut_off.failures
    assert (cut_off.in_flight, cut_off.held, cut_off.complete) == (1, held, False)
    assert cut_off.total_after + cut_off.held == cut_off.total_before
    # The same databases from a run that claims to be finished: that transfer is a failure.
    claimed_done = audit(damaged.ledgers, damaged.escrow, requested=6, finished=True)
    assert any(f"transfer {transfer}" in f and "never finished" in f for f in claimed_done.failures)


def test_transfers_not_yet_submitted_are_unfinished_not_wrong(damaged):
    cut_off = audit(damaged.ledgers, damaged.escrow, requested=8, finished=False)
    assert cut_off.ok and cut_off.not_submitted == 2 and not cut_off.complete
    finished = audit(damaged.ledgers, damaged.escrow, requested=8, finished=True)
    assert any("never accepted transfers [6, 7]" in f for f in finished.failures)


def test_a_duplicate_in_a_transfer_in_flight_is_still_wrong(damaged):
    transfer, _ = _rewind_to_distributing(damaged)
    url = next(url for url in damaged.ledgers.values()
               if _ops_of(url, transfer, "withdraw"))
    first = _ops_of(url, transfer, "withdraw")[0]
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(insert(ledger.operations).values(
            transfer=transfer, kind="withdraw", account=first.account, amount=first.amount,
            message_id="a-second-delivery"))
        connection.execute(update(ledger.accounts).where(ledger.accounts.c.name == first.account)
                           .values(balance=ledger.accounts.c.balance - first.amount))
    engine.dispose()
    result = audit(damaged.ledgers, damaged.escrow, requested=6, finished=False)
    assert any(f"transfer {transfer}" in f and "beyond what it allows" in f for f in result.failures)


def _ops_of(url, transfer, kind):
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(ledger.operations).where(
                ledger.operations.c.transfer == transfer, ledger.operations.c.kind == kind)).all()
    finally:
        engine.dispose()


def test_the_report_of_a_cut_off_run_says_unfinished_and_exits_3(damaged):
    _, held = _rewind_to_distributing(damaged)
    report = DemoReport(requested=6, seed=3, kill_rate=4.0, timeout=600, finished=False,
                        audit=audit(damaged.ledgers, damaged.escrow, requested=6, finished=False))
    text = report.render()
    assert report.exit_status == EXIT_UNFINISHED == 3
    assert "UNFINISHED" in text and "FAILED" not in text and "PASSED" not in text
    assert f"+ {held} held by the escrow" in text
    assert "1 transfer in flight" in text and "Nothing was lost or duplicated" in text
    assert "kill rate 4.0/s requested" in text and "achieved" in text


def test_the_report_of_a_wrong_run_says_failed_and_exits_1(damaged):
    transfer, _ = _rewind_to_distributing(damaged)
    report = DemoReport(requested=6, seed=3, kill_rate=1.0, finished=True,
                        audit=audit(damaged.ledgers, damaged.escrow, requested=6, finished=True))
    assert report.exit_status == EXIT_WRONG == 1
    assert "FAILED" in report.render() and transfer in report.render()
