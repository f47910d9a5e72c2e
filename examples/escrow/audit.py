"""The audit: every coin accounted for, every leg applied at most once — and exactly once when done.

It reads the databases directly, after every process has stopped, and trusts none of
the services' answers. It separates two very different findings:

* **wrong** — something exactly-once forbids, whenever the run stopped. These hold at
  *every instant*, so a run cut off by its time limit is checked as strictly as a
  finished one:

  - money is conserved: the money in the ledgers plus the money the escrow holds (what
    it withdrew for a transfer and has not yet deposited or refunded) equals the money
    at the start; no account is negative, and each balance equals its opening plus its
    recorded operations;
  - every ledger operation belongs to a transfer the escrow accepted, and is one of the
    legs that transfer allows, recorded **at most once**: a withdraw of one of its
    gather legs, a deposit of a distribute leg only once everything was gathered, a
    refund only of a leg that was withdrawn and only once the escrow turned to refunding,
    at most one refusal;
  - the escrow accepted each requested transfer at most once, and no transfer nobody
    requested;

* **unfinished** — work in flight when the run stopped: transfers not yet in a final
  state, and transfers the client had not submitted yet. In a finished run (``finished``
  true) each of these is a failure; after a time limit they are reported as in flight.

A finished transfer must show *exactly* the operations its outcome calls for — a
completed one its withdraws and deposits; a refunded one the withdraws that went
through, each with one refund, plus the one refusal. A duplicated delivery shows as a
second row, a lost one as a missing row.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

from sqlalchemy import Row, Table, select

from chttp_core.db import make_engine
from chttp_examples.escrow import escrow, ledger

__all__ = ["AuditResult", "audit", "ledger_totals", "refund_reason"]

Op = tuple[str, str, int]   # (kind, account, amount)
Leg = tuple[str, str, int]  # (ledger, account, amount)


@dataclass
class AuditResult:
    """What the audit found: ``failures`` (wrong) apart from work in flight (unfinished)."""

    total_before: int = 0
    total_after: int = 0
    transfers: int = 0
    states: dict[str, int] = field(default_factory=dict)
    operations: int = 0
    #: Money withdrawn for unfinished transfers and not yet deposited or refunded.
    held: int = 0
    #: Accepted transfers not in a final state.
    in_flight: int = 0
    #: Requested transfers the escrow never accepted (the client had not sent them yet).
    not_submitted: int = 0
    #: Why refunded transfers were refunded: "meant to fail" (a leg larger than all the
    #: money there is), "ran dry" (402: an ordinary amount an account could not cover
    #: just then), or "refused <status>".
    refund_reasons: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing wrong (work may still be in flight: see :attr:`complete`)."""
        return not self.failures

    @property
    def complete(self) -> bool:
        """Every requested transfer accepted and final."""
        return self.in_flight == 0 and self.not_submitted == 0

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


def audit(ledger_urls: Mapping[str, str], escrow_url: str, *, requested: int,
          finished: bool = True) -> AuditResult:
    """Check the invariants in the module docstring; ``ledger_urls`` maps name → DB URL.

    ``finished``: the run claims every transfer is done, so anything unfinished is a
    failure; ``False`` (a run stopped by its time limit) reports it as in flight.
    """
    result = AuditResult()
    rows = _read_all(escrow_url, escrow.transfers)
    _audit_acceptance(result, rows, requested, finished)
    ops: dict[str, Counter[tuple[str, str, str, int]]] = defaultdict(Counter)  # transfer → ops
    for name, url in sorted(ledger_urls.items()):
        for op in _audit_ledger(result, name, url):
            ops[op.transfer][(name, op.kind, op.account, op.amount)] += 1
    known = {row.id for row in rows}
    for transfer in sorted(set(ops) - known):
        result.fail(f"ledger operations for unknown transfer {transfer}: {_show(ops[transfer])}")
    for row in rows:
        _audit_transfer(result, row, ops.get(row.id, Counter()), finished)
    if result.total_after + result.held != result.total_before:
        result.fail(f"money not conserved: {result.total_after} in the ledgers + {result.held} "
                    f"held by the escrow != {result.total_before} at the start")
    return result


def _audit_acceptance(result: AuditResult, rows: list[Row[Any]], requested: int,
                      finished: bool) -> None:
    result.transfers = len(rows)
    refs = Counter(row.ref for row in rows)
    missing = [ref for ref in range(requested) if refs[ref] == 0]
    doubled = [ref for ref, count in refs.items() if count > 1]
    extra = [ref for ref in refs if not 0 <= ref < requested]
    result.not_submitted = len(missing)
    if missing and finished:
        result.fail(f"escrow never accepted transfers {missing[:10]}")
    if doubled:
        result.fail(f"escrow accepted transfers more than once: {doubled[:10]}")
    if extra:
        result.fail(f"escrow holds transfers nobody requested: {extra[:10]}")
    for row in rows:
        result.states[row.state] = result.states.get(row.state, 0) + 1


def _audit_ledger(result: AuditResult, name: str, url: str) -> list[Row[Any]]:
    """Balances against operations on one ledger; returns its operations."""
    accounts = _read_all(url, ledger.accounts)
    operations = _read_all(url, ledger.operations)
    result.operations += len(operations)
    result.total_before += sum(row.opening for row in accounts)
    result.total_after += sum(row.balance for row in accounts)
    movement: Counter[str] = Counter()
    for op in operations:
        movement[op.account] += ledger.EFFECT[op.kind] * op.amount
    for row in accounts:
        if row.balance < 0:
            result.fail(f"ledger {name}: {row.name} is negative ({row.balance})")
        if row.balance != row.opening + movement[row.name]:
            result.fail(f"ledger {name}: {row.name} holds {row.balance}, its operations say "
                        f"{row.opening + movement[row.name]}")
    return operations


def _audit_transfer(result: AuditResult, row: Row[Any],
                    ops: Counter[tuple[str, str, str, int]], finished: bool) -> None:
    spec = json.loads(row.spec)
    gather = Counter(_leg(leg) for leg in spec["gather"])
    distribute = Counter(_leg(leg) for leg in spec["distribute"])
    by_kind: dict[str, Counter[Leg]] = defaultdict(Counter)
    for (ledger_name, kind, account, amount), count in ops.items():
        by_kind[kind][(ledger_name, account, amount)] += count
    withdrawn, deposited = by_kind["withdraw"], by_kind["deposit"]
    refunded, refused = by_kind["refund"], by_kind["refused"]
    label = f"transfer {row.id} (ref {row.ref})"

    # At every instant: each leg at most once, and only in an order the driver allows.
    for kind, allowed in (("withdraw", gather), ("refused", gather), ("deposit", distribute),
                          ("refund", withdrawn)):
        excess = by_kind[kind] - allowed
        if excess:
            result.fail(f"{label}: {_legs(excess, kind)} beyond what it allows "
                        f"(recorded {_show(ops)})")
    if sum(refused.values()) > 1:
        result.fail(f"{label}: refused more than once (recorded {_show(ops)})")
    if deposited and (withdrawn != gather or refused or refunded):
        result.fail(f"{label}: deposited before everything was gathered (recorded {_show(ops)})")
    if refunded and row.state not in ("refunding", "refunded"):
        # The driver records "refunding" (after a refusal) before its first refund.
        result.fail(f"{label}: refunded while {row.state} (recorded {_show(ops)})")
    held = sum(_amounts(withdrawn)) - sum(_amounts(deposited)) - sum(_amounts(refunded))
    if held < 0:
        result.fail(f"{label}: paid out {-held} more than it gathered (recorded {_show(ops)})")

    if row.state == "completed":
        want = {"withdraw": gather, "deposit": distribute}
    elif row.state == "refunded":
        detail = json.loads(row.detail)
        refusal = detail["refused"]
        result.refund_reasons[refund_reason(refusal)] += 1
        want = {"withdraw": Counter(_leg(leg) for leg in detail["refunded"]),
                "refund": Counter(_leg(leg) for leg in detail["refunded"]),
                "refused": Counter([_leg(refusal["leg"])] if refusal["status"] == 402 else [])}
    else:
        result.in_flight += 1
        result.held += max(0, held)
        if finished:
            result.fail(f"{label} never finished: state {row.state}")
        return
    for kind in ("withdraw", "deposit", "refund", "refused"):
        if by_kind[kind] != want.get(kind, Counter()):
            result.fail(f"{label} is {row.state}: expected {_legs(want.get(kind, Counter()), kind)}, "
                        f"recorded {_legs(by_kind[kind], kind)}")


def refund_reason(refusal: Mapping[str, Any]) -> str:
    """Why a transfer was refunded, from the refusal its escrow recorded."""
    from chttp_examples.escrow.client import IMPOSSIBLE_AMOUNT

    if refusal["leg"]["amount"] >= IMPOSSIBLE_AMOUNT:
        return "meant to fail"
    if refusal["status"] == 402:
        return "ran dry"
    return f"refused {refusal['status']}"


def _leg(leg: Mapping[str, Any]) -> Leg:
    return (leg["ledger"], leg["account"], leg["amount"])


def _amounts(legs: Counter[Leg]) -> list[int]:
    return [amount * count for (_, _, amount), count in legs.items()]


def _legs(legs: Counter[Leg], kind: str) -> str:
    return "[" + ", ".join(f"{n}×{kind} {name}/{account} {amount}"
                           for (name, account, amount), n in sorted(legs.items())) + "]"


def _show(ops: Counter[tuple[str, str, str, int]]) -> str:
    return "[" + ", ".join(f"{n}×{kind} {name}/{account} {amount}"
                           for (name, kind, account, amount), n in sorted(ops.items())) + "]"
