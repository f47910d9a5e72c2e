"""The audit: every coin accounted for, every leg applied exactly once on every ledger.

It reads the databases directly, after every process has stopped, and trusts none of
the services' answers. What it proves:

* **money is conserved**: the total over both ledgers after equals the total before;
* **no account is negative**, and each balance equals its opening plus its operations;
* **the escrow accepted each requested transfer exactly once** (refs ``0..n-1``, once
  each) and every one reached a final state;
* **each transfer was applied exactly once on every ledger**: the operations a ledger
  recorded for a transfer are, as a multiset, exactly those its outcome calls for —
  a completed transfer's withdraws and deposits; a refunded one's withdraws that went
  through, each with one refund, plus the one refusal. A duplicated delivery would show
  as a second row; a lost one as a missing row.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

from sqlalchemy import Row, Table, select

from chttp_core.db import make_engine
from chttp_examples.escrow import escrow, ledger

__all__ = ["AuditResult", "audit", "ledger_totals"]

Op = tuple[str, str, int]   # (kind, account, amount)


@dataclass
class AuditResult:
    """What the audit found; ``ok`` only if ``failures`` is empty."""

    total_before: int = 0
    total_after: int = 0
    transfers: int = 0
    states: dict[str, int] = field(default_factory=dict)
    operations: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, text: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(text)


def _read_all(db_url: str, table: Table) -> list[Row[Any]]:
    """Every row of ``table`` in the database at ``db_url`` (the audit reads, never writes)."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(table)).all())
    finally:
        engine.dispose()


def ledger_totals(ledger_url: str) -> tuple[int, int]:
    """(opening total, current total) of one ledger."""
    rows = _read_all(ledger_url, ledger.accounts)
    return sum(row.opening for row in rows), sum(row.balance for row in rows)


def audit(ledger_urls: Mapping[str, str], escrow_url: str, *, requested: int) -> AuditResult:
    """Check the invariants in the module docstring; ``ledger_urls`` maps name → DB URL."""
    result = AuditResult()
    expected: dict[str, Counter[Op]] = defaultdict(Counter)   # "ledger/transfer" → ops
    known: set[str] = set()

    rows = _read_all(escrow_url, escrow.transfers)
    result.transfers = len(rows)
    refs = Counter(row.ref for row in rows)
    missing = [ref for ref in range(requested) if refs[ref] == 0]
    doubled = [ref for ref, count in refs.items() if count > 1]
    extra = [ref for ref in refs if not 0 <= ref < requested]
    if missing:
        result.fail(f"escrow never accepted transfers {missing[:10]}")
    if doubled:
        result.fail(f"escrow accepted transfers more than once: {doubled[:10]}")
    if extra:
        result.fail(f"escrow holds transfers nobody requested: {extra[:10]}")
    for row in rows:
        known.add(row.id)
        result.states[row.state] = result.states.get(row.state, 0) + 1
        spec = json.loads(row.spec)
        if row.state == "completed":
            for leg in spec["gather"]:
                expected[f"{leg['ledger']}/{row.id}"][("withdraw", leg["account"], leg["amount"])] += 1
            for leg in spec["distribute"]:
                expected[f"{leg['ledger']}/{row.id}"][("deposit", leg["account"], leg["amount"])] += 1
        elif row.state == "refunded":
            detail = json.loads(row.detail)
            for leg in detail["refunded"]:
                ops = expected[f"{leg['ledger']}/{row.id}"]
                ops[("withdraw", leg["account"], leg["amount"])] += 1
                ops[("refund", leg["account"], leg["amount"])] += 1
            leg = detail["refused"]["leg"]
            if detail["refused"]["status"] == 402:
                expected[f"{leg['ledger']}/{row.id}"][("refused", leg["account"], leg["amount"])] += 1
        else:
            result.fail(f"transfer {row.ref} ({row.id}) never finished: state {row.state}")

    for name, url in sorted(ledger_urls.items()):
        _audit_ledger(result, name, url, expected, known)
    return result


def _audit_ledger(
    result: AuditResult, name: str, url: str, expected: Mapping[str, Counter[Op]], known: set[str]
) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            accounts = connection.execute(select(ledger.accounts)).all()
            operations = connection.execute(select(ledger.operations)).all()
    finally:
        engine.dispose()
    result.operations += len(operations)
    result.total_before += sum(row.opening for row in accounts)
    result.total_after += sum(row.balance for row in accounts)

    movement: Counter[str] = Counter()
    actual: dict[str, Counter[Op]] = defaultdict(Counter)
    for op in operations:
        movement[op.account] += ledger.EFFECT[op.kind] * op.amount
        actual[op.transfer][(op.kind, op.account, op.amount)] += 1
        if op.transfer not in known:
            result.fail(f"ledger {name}: operation {op.kind} {op.amount} for unknown transfer {op.transfer}")
    for row in accounts:
        if row.balance < 0:
            result.fail(f"ledger {name}: {row.name} is negative ({row.balance})")
        if row.balance != row.opening + movement[row.name]:
            result.fail(f"ledger {name}: {row.name} holds {row.balance}, its operations say "
                        f"{row.opening + movement[row.name]}")
    for transfer in known:
        want = expected.get(f"{name}/{transfer}", Counter())
        got = actual.get(transfer, Counter())
        if want != got:
            result.fail(f"ledger {name}, transfer {transfer}: expected {_show(want)}, "
                        f"recorded {_show(got)}")


def _show(ops: Counter[Op]) -> str:
    return "[" + ", ".join(f"{n}×{kind} {account} {amount}"
                           for (kind, account, amount), n in sorted(ops.items())) + "]" if ops else "[]"
