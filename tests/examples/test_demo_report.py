"""The demo's report says why transfers were refunded (issue 25 item 8).

The README says one transfer in eight is meant to fail; a run refunds many more,
because random amounts also drain accounts. The report now tells the two apart, from
the refusal each refunded transfer recorded.
"""

from __future__ import annotations

from collections import Counter

from chttp_examples.escrow.audit import AuditResult, refund_reason
from chttp_examples.escrow.client import IMPOSSIBLE_AMOUNT
from chttp_examples.escrow.demo import DemoReport


def _refusal(amount: int, status: int) -> dict:
    return {"leg": {"ledger": "A", "account": "alice", "amount": amount}, "status": status,
            "answer": {}}


def test_refund_reasons_come_from_the_recorded_refusal() -> None:
    assert refund_reason(_refusal(IMPOSSIBLE_AMOUNT, 402)) == "meant to fail"
    assert refund_reason(_refusal(120, 402)) == "ran dry"
    assert refund_reason(_refusal(120, 404)) == "refused 404"


def test_the_report_explains_its_refunds() -> None:
    audit = AuditResult(transfers=100, states={"completed": 59, "refunded": 41},
                        refund_reasons=Counter({"meant to fail": 13, "ran dry": 28}))
    report = DemoReport(requested=100, seed=8, kill_rate=1.0, finished=True, audit=audit)
    lines = report.render().splitlines()
    [first] = [i for i, line in enumerate(lines) if line.startswith("  refunds     ")]
    assert lines[first] == "  refunds     41: 13 meant to fail (one in eight asks more than there is),"
    assert lines[first + 1] == " " * 14 + "28 found an account short (402 insufficient funds)"


def test_no_refund_line_without_refunds() -> None:
    report = DemoReport(requested=1, seed=1, kill_rate=0.0, finished=True,
                        audit=AuditResult(transfers=1, states={"completed": 1}))
    assert "refunds" not in report.render()
