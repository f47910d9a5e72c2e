"""Senders on two hosts over one journal: a lease, never two runners, never a new id.

Host A runs a resumable function of four certified sends through PgBouncer's journal;
host B (another namespace *and* another host name) calls ``resume_all()`` all along.
A is SIGKILLed while its third send lingers in the receiver. B must be refused while
A's lease lasts, take the oplog over only after the lease expired, replay A's answered
sends from the journal without sending them, and resend the in-flight one under the
id A gave it: one effect per id, as many ids as steps.
"""

from __future__ import annotations

import pytest
from chttp_examples.multihost.scenarios import sender_takeover

pytestmark = pytest.mark.slow


def test_a_second_sender_host_takes_over_after_the_lease_only(bouncer_topology):
    takeover = sender_takeover(bouncer_topology, steps=4, linger_step=2, lease=6.0)
    print("\n" + takeover.summary())
    assert takeover.a_alive_at_kill, "A stalled past its lease and gave up before the kill"
    a_ids = [i for _, i in takeover.a_posts]
    b_ids = [i for _, i in takeover.b_posts]
    assert len(set(a_ids)) == 3                          # steps 0, 1 and the in-flight 2
    assert max(t for t, _ in takeover.a_posts) < takeover.killed_at
    # Refused while A held the lease (A was alive then), never running beside it:
    assert takeover.b_busy and min(takeover.b_busy) < takeover.killed_at
    assert takeover.b_posts, "B never took over"
    assert min(t for t, _ in takeover.b_posts) >= takeover.lease_expired_at
    # The in-flight send went again under its old id; the answered ones did not go again.
    assert b_ids[0] == takeover.in_flight
    assert set(a_ids[:2]).isdisjoint(b_ids)
    assert len(set(a_ids) | set(b_ids)) == takeover.steps
    # Exactly one effect per id, and B's result is those effects' nonces in order.
    assert sorted(len(nonces) for nonces in takeover.effects.values()) == [1] * takeover.steps
    assert takeover.b_result is not None
    ordered = list(dict.fromkeys(a_ids + b_ids))
    assert takeover.b_result == [takeover.effects[i][0] for i in ordered]
