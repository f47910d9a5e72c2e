"""Patroni without ``synchronous_mode``: acknowledged answers lost at a failover (expected).

The leader's WAL senders are stopped for one second under load (the replicas lag),
then its whole host is killed; Patroni promotes a replica once the leader key expires.
Without synchronous mode the commits of that second were acknowledged to clients and
exist only on the dead host: the history check finds those answers lost, and their late
retries (a sender that crashed before journaling the answer resends) run the handler a
second time. With ``synchronous_mode: true`` (tests/multihost/test_patroni.py) the same
commits wait for the synchronous standby and no client ever sees them.
"""

from __future__ import annotations

import pytest
from chttp_examples.multihost import patroni_faults
from chttp_examples.multihost.patroni_faults import PatroniTopology
from chttp_examples.multihost.scenarios import WARMUP

pytestmark = pytest.mark.slow


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="without synchronous_mode Patroni promotes a replica that lacks "
                          "acknowledged commits: answers lost, handlers run twice "
                          "(docs/scale.rst requires synchronous_mode)")
def test_patroni_without_synchronous_mode_loses_acknowledged_answers(
        patroni_async_topology: PatroniTopology):
    """The expected failure: only the final assertion may fail.

    A precondition that does not hold fails the test outright (pytest.fail), so it can
    never pass as an expected failure for the wrong reason.
    """
    outcome = patroni_faults.leader_host_killed_while_lagging(patroni_async_topology)
    print("\n" + outcome.summary())
    if outcome.report.messages <= WARMUP:
        pytest.fail("the load did not run")
    if not outcome.extra["WAL senders stopped"]:
        pytest.fail("no WAL sender was stopped: the replicas did not lag")
    if not outcome.extra["answers acknowledged while the replicas lagged"]:
        pytest.fail("no answer was acknowledged while the replicas lagged: nothing to lose")
    if outcome.report.duplicates or outcome.report.unresolved or outcome.report.orphans:
        pytest.fail(f"an unexpected violation: {outcome.report.summary()}")
    assert outcome.report.lost == [] and outcome.report.replay_mismatch == []
