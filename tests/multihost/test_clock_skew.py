"""Two sender hosts whose clocks are a few seconds apart share one lease (issue 15).

Two sender processes in two network namespaces (and UTS namespaces: two host names)
share one PostgreSQL journal through PgBouncer; host B's journal clock is shifted by
±3 s (``Journal(clock=…)``, the sender's ``--clock-skew``). Shifting the real-time
clock of one namespace is not possible on Linux — time namespaces offset only the
monotonic and boot clocks — so the skew is the journal's clock: every time the journal
takes from its host.

A lease does not take it: its deadline is written as the *database's* ``clock_timestamp()
+ lease`` and compared with the database's clock inside the takeover's compare-and-swap
(chttp_client.leases). Both hosts read the one clock of the server, so a skew between
them changes nothing. Before that change the lease was stamped with the owner's clock
and compared with the taker's, and a host ``s`` seconds ahead saw every lease ``s``
seconds shorter — with a 3 s lease and B 3 s ahead, B took over a *live*, renewing A
(that finding is now the second test, inverted).

* ``test_skewed_takeover_waits_for_the_lease_by_the_databases_clock``: lease 8 s. A is
  SIGKILLed mid-send; B, 3 s ahead or behind, is refused while A lives, and takes over
  only once the lease has expired by the database's clock — not 3 s early or late —
  never while A runs, never under a new id; one effect per id.
* ``test_a_skew_beyond_the_renewal_margin_no_longer_takes_over_a_live_owner``: lease
  3 s with B 3 s ahead — more than the renewal margin (2/3 · lease − poll). A lingers
  10 s in one send, renewing; B is refused all along (still after the moment its
  clock would have called the lease expired), sends nothing, and stops once A finished
  the oplog itself: one runner, one id per step, one effect per id.
"""

from __future__ import annotations

import pytest
from chttp_examples.multihost.scenarios import Takeover, sender_takeover

pytestmark = pytest.mark.slow

SKEW = 3.0


def assert_exactly_once(takeover: Takeover) -> None:
    a_ids = [i for _, i in takeover.a_posts]
    b_ids = [i for _, i in takeover.b_posts]
    assert len(set(a_ids) | set(b_ids)) == takeover.steps   # never a new id for a step
    assert sorted(len(n) for n in takeover.effects.values()) == [1] * takeover.steps
    assert takeover.b_result is not None
    ordered = list(dict.fromkeys(a_ids + b_ids))
    assert takeover.b_result == [takeover.effects[i][0] for i in ordered]


@pytest.mark.parametrize("b_skew", [SKEW, -SKEW], ids=["b-ahead", "b-behind"])
def test_skewed_takeover_waits_for_the_lease_by_the_databases_clock(bouncer_topology, b_skew):
    takeover = sender_takeover(bouncer_topology, steps=4, linger_step=2, lease=8.0, linger=10.0,
                               b_skew=b_skew, tag=f"skew{b_skew:+.0f}")
    first_b = takeover.b_took_over_at
    print("\n" + takeover.summary() + f"\nB's clock {b_skew:+.0f} s: B first sent "
          f"{(first_b or 0) - takeover.killed_at:.2f} s (real) after A was killed, "
          f"{(first_b or 0) - takeover.lease_expired_at:.2f} s after the lease expired "
          f"by the database's clock")
    assert takeover.a_alive_at_kill, "A stalled past its lease and gave up before the kill"
    assert takeover.b_busy and min(takeover.b_busy) < takeover.killed_at   # refused while A lived
    assert first_b is not None, "B never took over"
    assert first_b > takeover.killed_at                       # never beside a live A
    # Only after the lease, by the database's clock (the server shares this machine's
    # real-time clock, the one the logs' times are read from) — whatever B's skew.
    assert first_b >= takeover.lease_expired_at
    a_ids = [i for _, i in takeover.a_posts]
    assert [i for _, i in takeover.b_posts][0] == takeover.in_flight
    assert set(a_ids[:2]).isdisjoint(i for _, i in takeover.b_posts)
    assert_exactly_once(takeover)


def test_a_skew_beyond_the_renewal_margin_no_longer_takes_over_a_live_owner(bouncer_topology):
    lease = 3.0
    takeover = sender_takeover(bouncer_topology, steps=4, linger_step=1, linger=10.0, lease=lease,
                               b_skew=SKEW, kill_a=False, tag="live")
    lingering_sent_at = takeover.a_posts[1][0]
    print("\n" + takeover.summary() + f"\nlive A, B's clock +{SKEW:.0f} s, lease {lease:.0f} s: "
          f"B refused {len(takeover.b_busy)} times, the last "
          f"{max(takeover.b_busy, default=0) - lingering_sent_at:.2f} s after A's lingering "
          f"send; A ended with {takeover.a_errors or 'its result'}")
    # A ran its function to the end, never taken over …
    assert takeover.a_done and takeover.a_errors == []
    # … while B was refused, still after the moment B's own clock (lease + skew past
    # A's last renewal, at the latest the lingering send) would have freed the lease …
    assert takeover.b_busy and max(takeover.b_busy) > lingering_sent_at + lease + SKEW
    # … and sent nothing: one runner for the oplog.
    assert takeover.b_posts == [] and takeover.b_result is None
    a_ids = [i for _, i in takeover.a_posts]
    assert len(a_ids) == len(set(a_ids)) == takeover.steps        # one id per step
    assert sorted(len(n) for n in takeover.effects.values()) == [1] * takeover.steps
