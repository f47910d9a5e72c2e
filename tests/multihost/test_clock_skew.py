"""A lease taken over across two hosts whose clocks are a few seconds apart (issue 15).

Two sender processes in two network namespaces (and UTS namespaces: two host names)
share one PostgreSQL journal through PgBouncer; host B's journal clock is shifted by
±3 s (``Journal(clock=…)``, the sender's ``--clock-skew``). Shifting the real-time
clock of one namespace is not possible on Linux — time namespaces offset only the
monotonic and boot clocks — so the skew is the journal's clock, which is the only clock
a lease is stamped with and compared against.

How the lease meets skew: the owner writes ``lease_expires_at = its now + lease`` and
renews it once a third of the lease has passed (checked at most every second), so by
its own clock at least ``2/3 · lease − poll`` always remains. Another host compares
that instant with *its* clock. A host running ``s`` seconds ahead therefore sees the
lease ``s`` seconds shorter, one running behind sees it longer:

* ``test_skewed_takeover_waits_for_the_lease_by_the_takers_clock``: lease 8 s (margin
  ≈ 4.3 s > 3 s). A is SIGKILLed mid-send; B, ahead or behind, is refused while A
  lives, takes over only once the lease has expired *by B's clock* (so 3 s early or
  late in real time), never while A runs, never under a new id; one effect per id.
* ``test_finding_a_skew_beyond_the_renewal_margin_takes_over_a_live_owner`` (a
  finding): lease 3 s with B 3 s ahead — larger than the margin, so B finds the lease
  of a *live*, renewing A expired and takes the oplog over. The fencing still holds:
  A's next commit raises ``OplogTakenOverError``, no step gets a second id, every
  effect happens once — but two hosts do run the function at the same time, which the
  lease is meant to prevent. Leases must be several times the clock error between
  hosts (docs/scale.rst); keep the hosts on NTP.
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
def test_skewed_takeover_waits_for_the_lease_by_the_takers_clock(bouncer_topology, b_skew):
    takeover = sender_takeover(bouncer_topology, steps=4, linger_step=2, lease=8.0, linger=10.0,
                               b_skew=b_skew, tag=f"skew{b_skew:+.0f}")
    first_b = takeover.b_took_over_at
    print("\n" + takeover.summary() + f"\nB's clock {b_skew:+.0f} s: B first sent "
          f"{(first_b or 0) - takeover.killed_at:.2f} s (real) after A was killed; lease "
          f"expiry (A's clock) − B's clock at takeover "
          f"{takeover.lease_expired_at - ((first_b or 0) + b_skew):.2f} s")
    assert takeover.a_alive_at_kill, "A stalled past its lease and gave up before the kill"
    assert takeover.b_busy and min(takeover.b_busy) < takeover.killed_at   # refused while A lived
    assert first_b is not None, "B never took over"
    assert first_b > takeover.killed_at                       # never beside a live A
    assert first_b + b_skew >= takeover.lease_expired_at      # only after the lease, by B's clock
    a_ids = [i for _, i in takeover.a_posts]
    assert [i for _, i in takeover.b_posts][0] == takeover.in_flight
    assert set(a_ids[:2]).isdisjoint(i for _, i in takeover.b_posts)
    assert_exactly_once(takeover)


def test_finding_a_skew_beyond_the_renewal_margin_takes_over_a_live_owner(bouncer_topology):
    takeover = sender_takeover(bouncer_topology, steps=4, linger_step=1, linger=10.0, lease=3.0,
                               b_skew=SKEW, kill_a=False, tag="live")
    first_b = takeover.b_took_over_at
    print("\n" + takeover.summary() + f"\nlive A, B's clock +{SKEW:.0f} s, lease 3 s: B first "
          f"sent {(first_b or 0) - takeover.a_posts[0][0]:.2f} s after A's first send; A ended "
          f"with {takeover.a_errors or 'its result'}")
    assert first_b is not None
    # The finding: B ran while A was alive and still sending (A had not ended).
    assert first_b < takeover.killed_at
    assert not takeover.a_done and takeover.a_errors == ["OplogTakenOverError"]
    # What still holds: the fencing — one id per step, one effect per id.
    assert_exactly_once(takeover)
