"""Exactly-once on the stack people deploy: Patroni + etcd deciding the failovers.

Three PostgreSQL nodes run by Patroni (``synchronous_mode: true``) over a three-member
etcd, each on its own namespace host; three receiver hosts reach the store through
libpq's multi-host URL with ``target_session_attrs=read-write`` (psycopg2 and psycopg 3),
two client hosts send through them. Nothing here promotes anything: Patroni decides.
After each fault the whole history is checked against the leader of the end (no id with
two effects, no acknowledged answer missing, replays equal to the first answer, every
message answered). The figures are printed: ``pytest -k patroni -s`` shows them.
"""

from __future__ import annotations

import psycopg
import psycopg2
import pytest
from chttp_examples.multihost import patroni_faults
from chttp_examples.multihost.patroni_faults import PatroniTopology
from chttp_examples.multihost.scenarios import WARMUP, Outcome

pytestmark = pytest.mark.slow


def _assert_held(outcome: Outcome) -> None:
    print("\n" + outcome.summary())
    report = outcome.report
    assert report.messages > WARMUP
    assert report.duplicates == [], report.summary()
    assert report.lost == [], report.summary()
    assert report.ok, report.summary()
    assert outcome.extra["failover time"] != "never", "no attempt succeeded after the fault"


def test_patroni_cluster_is_three_hosts_and_the_url_finds_the_leader(patroni_topology: PatroniTopology):
    cluster = patroni_topology.cluster
    assert cluster is not None
    cluster.wait_healthy()
    members = cluster.members()
    assert sorted(m["role"] for m in members) == ["leader", "replica", "sync_standby"]
    assert len({n.host.netns for n in cluster.nodes}) == 3
    leader = cluster.leader()
    # Both drivers, given every node, land on the leader: the one that accepts writes.
    url = cluster.url()
    dsn = " ".join(["host=" + ",".join(n.host.address for n in cluster.nodes),
                    "port=" + ",".join("5432" for _ in cluster.nodes),
                    f"dbname={cluster.database} user=postgres target_session_attrs=read-write"])
    for connect in (psycopg2.connect, psycopg.connect):
        connection = connect(dsn)
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT host(inet_server_addr()), pg_is_in_recovery()")
            assert cursor.fetchone() == (leader.host.address, False)
        finally:
            connection.close()
    assert url.startswith("postgresql+psycopg2://") and "target_session_attrs=read-write" in url
    # The receivers use the two drivers.
    assert {patroni_topology.store_url_for(n).split(":")[0] for n in range(3)} == {
        "postgresql+psycopg2", "postgresql+psycopg"}


def test_patroni_leader_postgres_sigkilled(patroni_topology: PatroniTopology):
    _assert_held(patroni_faults.leader_postgres_killed(patroni_topology))


def test_patroni_switchover(patroni_topology: PatroniTopology):
    outcome = patroni_faults.switchover(patroni_topology)
    _assert_held(outcome)
    assert outcome.extra["leader after"] != outcome.extra["leader before"]


def test_patroni_senders_share_a_journal_through_a_switchover(patroni_topology: PatroniTopology):
    """Issue 21, item 3: no function step runs twice, none is lost, no id gets a new body."""
    takeover, leaders = patroni_faults.senders_through_switchover(patroni_topology)
    print("\n" + takeover.summary() + f"\nleaders: {leaders}")
    assert leaders["leader after"] != leaders["leader before"]
    assert takeover.a_alive_at_kill, "A stalled past its lease and gave up before the kill"
    a_ids = [i for _, i in takeover.a_posts]
    b_ids = [i for _, i in takeover.b_posts]
    assert takeover.b_posts, "B never took over"
    assert min(t for t, _ in takeover.b_posts) >= takeover.lease_expired_at
    assert b_ids[0] == takeover.in_flight            # the in-flight send, under its old id
    assert set(a_ids[:2]).isdisjoint(b_ids)          # the answered ones were not sent again
    assert len(set(a_ids) | set(b_ids)) == takeover.steps
    assert sorted(len(nonces) for nonces in takeover.effects.values()) == [1] * takeover.steps
    ordered = list(dict.fromkeys(a_ids + b_ids))
    assert takeover.b_result == [takeover.effects[i][0] for i in ordered]


def test_patroni_etcd_member_of_the_leader_killed(patroni_topology: PatroniTopology):
    """The leader's etcd member dies: the other two keep the quorum, nothing is lost.

    Patroni keeps the leader if it reaches another member within ``retry_timeout``, or
    another node takes over; the test accepts either and checks the history. It leaves
    the cluster healthy (the member restarted and rejoined) for the tests after it.
    """
    outcome = patroni_faults.etcd_member_killed(patroni_topology)
    _assert_held(outcome)
    report = outcome.report
    assert report.replay_mismatch == [] and report.stored_mismatch == [], report.summary()
    assert report.unresolved == [] and report.orphans == [], report.summary()


def test_patroni_receiver_host_cut_mid_request(patroni_topology: PatroniTopology):
    """A receiver's whole host cut while a request lingers in its transaction on the leader.

    The clients retry through the other receivers; the cut-off transaction holds the
    message's claim until PostgreSQL ends it, then a retry elsewhere runs it once.
    """
    outcome = patroni_faults.receiver_host_cut(patroni_topology)
    _assert_held(outcome)
    report = outcome.report
    assert report.replay_mismatch == [] and report.stored_mismatch == [], report.summary()
    assert report.unresolved == [] and report.orphans == [], report.summary()
    assert outcome.extra["attempts without an HTTP answer"] > 0, "no request was in flight at the cut"


def test_patroni_leader_host_isolated(patroni_topology: PatroniTopology):
    """The split-brain case: Patroni elects a new leader while the old one still runs.

    Before the store's replays waited for the synchronous standby, this lost an answer
    in two runs of nine: a replay served by the old leader while it shut down, of a
    commit whose wait for the standby was terminated
    (tests/multihost/test_replay_before_replication.py shows it step by step). Now every
    guarantee holds, that one included.
    """
    outcome = patroni_faults.leader_isolated(patroni_topology)
    _assert_held(outcome)
    report = outcome.report
    assert outcome.extra["new leader"] != outcome.extra["leader before"]
    assert report.replay_mismatch == [] and report.stored_mismatch == [], report.summary()
    assert report.unresolved == [] and report.orphans == [], report.summary()
    assert outcome.extra["lost answers given only by replays"] == [], report.summary()


def test_patroni_leader_host_killed_while_replicas_lagged(patroni_topology: PatroniTopology):
    """The contrast of test_patroni_async.py: the same fault with synchronous_mode loses nothing.

    Last in this module: the killed host stays dead.
    """
    outcome = patroni_faults.leader_host_killed_while_lagging(patroni_topology)
    _assert_held(outcome)
    assert outcome.extra["WAL senders stopped"] > 0
    assert outcome.extra["new leader"] != outcome.extra["leader before"]
    # The late retries of answered messages were all answered from the store, as first.
    assert outcome.report.replay_mismatch == []
