"""The receivers behind HAProxy instead of the multi-host URL: it follows Patroni's leader.

HAProxy (on a host of its own) sends each new connection to the node whose Patroni
answers ``GET /primary`` with 200, and closes the sessions to a node once its check
fails (:mod:`chttp_examples.multihost.haproxy`). The receivers know one address only;
after a switchover they must reach the new leader through it, with the history checked
as in tests/multihost/test_patroni.py: 0 lost, 0 duplicated.
"""

from __future__ import annotations

import pytest
from chttp_examples.multihost import patroni_faults
from chttp_examples.multihost.database import query
from chttp_examples.multihost.haproxy import PROXY_PORT
from chttp_examples.multihost.patroni import wait_for
from chttp_examples.multihost.patroni_faults import PatroniTopology
from chttp_examples.multihost.scenarios import Outcome

from tests.multihost.test_patroni import _assert_held as assert_held

pytestmark = pytest.mark.slow


def _assert_held(outcome: Outcome) -> None:
    """tests/multihost/test_patroni.py's check, and every replay equal to its first answer."""
    assert_held(outcome)
    report = outcome.report
    assert report.replay_mismatch == [] and report.stored_mismatch == [], report.summary()


def _routed_to(topo: PatroniTopology) -> tuple[str, bool]:
    assert topo.proxy is not None
    ((address, in_recovery),) = query(PROXY_PORT, "SELECT host(inet_server_addr()), pg_is_in_recovery()",
                                      host=topo.proxy.address)
    return str(address), bool(in_recovery)


def test_haproxy_switchover(patroni_haproxy_topology: PatroniTopology):
    """``patronictl switchover`` under load; HAProxy moves the receivers' new connections."""
    topo = patroni_haproxy_topology
    assert topo.cluster is not None and topo.proxy is not None
    assert all("@" + topo.proxy.address in url for url in topo.store_urls)
    assert _routed_to(topo) == (topo.cluster.leader().host.address, False)
    outcome = patroni_faults.switchover(topo)
    _assert_held(outcome)
    assert outcome.extra["leader after"] != outcome.extra["leader before"]
    new = topo.cluster.node(outcome.extra["leader after"]).host.address
    wait_for(lambda: _routed_to(topo) == (new, False), 60, "HAProxy to route to the new leader")


def test_haproxy_leader_postgres_sigkilled(patroni_haproxy_topology: PatroniTopology):
    _assert_held(patroni_faults.leader_postgres_killed(patroni_haproxy_topology))
