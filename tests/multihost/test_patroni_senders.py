"""Issue 21, item 3: senders on the Patroni stack, a storm of functions through a failover.

Two sender hosts share one journal on the cluster (multi-host URL,
``target_session_attrs=read-write``) and each run a storm of resumable functions that
persist a token and post it to a receiver whose store is on the same cluster; the
leader's PostgreSQL is SIGKILLed, or a switchover moves the leader, a third of the way through
(:mod:`chttp_examples.multihost.patroni_storm`). Afterwards: every function finished
(its own call, or a ``resume_all()`` on either host once its lease expired), one effect
per function at the receiver with the token and nonce the function returned, and each
journaled send's fingerprint equal to the one the receiver stored for its id. A third
run also SIGKILLs one sender host at the fault: the other finishes its cut-off runs. The
figures are printed (``-s``).
"""

from __future__ import annotations

import pytest
from chttp_examples.multihost.patroni_faults import PatroniTopology
from chttp_examples.multihost.patroni_storm import Storm, check, storm_through_failover

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fault", ["postgres-sigkill", "switchover"])
def test_patroni_sender_storm_through_a_failover(patroni_topology: PatroniTopology, fault: str):
    storm = storm_through_failover(patroni_topology, fault=fault)
    _assert_storm_held(storm)
    if fault == "switchover":
        assert storm.extra["leader after"] != storm.extra["leader before"]


def test_patroni_sender_storm_a_sender_host_killed_at_the_failover(patroni_topology: PatroniTopology):
    """Host s3 SIGKILLed right after the leader's PostgreSQL: s4 finishes s3's cut-off runs."""
    storm = storm_through_failover(patroni_topology, kill_sender=True)
    _assert_storm_held(storm)
    own = storm.own_keys()
    s3_done_by_s4 = [r for r in storm.logs["s4"] if r["event"] == "resume"
                     and r["status"] == "done" and r["result"]["key"] in own["s3"]]
    assert s3_done_by_s4, "no function of the killed host was left for s4 to finish"


def _assert_storm_held(storm: Storm) -> None:
    print("\n" + storm.summary())
    assert check(storm) == []
    figures = storm.figures()
    assert figures["failover time"] != "never", "no function finished after the fault"
    # The fault landed mid-storm: some function finished after it.
    assert any(r["t"] > storm.fault_at for records in storm.logs.values() for r in records
               if r["event"] == "call-done" or r["event"] == "resume")
