"""The receivers on a Patroni cluster, and Patroni's own failovers under load.

:class:`PatroniTopology` is :class:`~.topology.Topology` with the database hosts of
:class:`~.patroni.PatroniCluster` instead of a primary the test promotes itself: three
receiver hosts reach the store through libpq's multi-host URL
(``target_session_attrs=read-write``) — receiver 2 with psycopg 3, the others with
psycopg2 — and two client hosts send through them.

Each fault runs under load with a probe lingering mid-transaction on the leader (as in
:mod:`.scenarios`), then the history is checked against the leader of the end:

* :func:`leader_postgres_killed` — the leader's postmaster and backends SIGKILLed;
  Patroni restarts it (or another node takes the leader key);
* :func:`switchover` — ``patronictl switchover`` to the synchronous standby;
* :func:`leader_isolated` — the leader's host cut (iptables) from the other database
  hosts while the receivers still reach it: its etcd member loses the quorum, Patroni
  there demotes it, the others elect a new leader; then the cut is removed and the old
  leader rejoins as a replica;
* :func:`etcd_member_killed` — the etcd member the leader's Patroni talks to SIGKILLed
  (the other two keep the quorum), kept dead past the leader key's ``ttl``, restarted;
* :func:`receiver_host_cut` — a receiver's whole host cut (iptables) while a request
  lingers there; the clients retry through the other receivers.

The figures of each (:func:`figures`): failover time (from the fault to the first
successful answer to an attempt begun after it), answers lost, effects duplicated,
attempts answered 503, attempts that got no HTTP answer at all; and, once the load has
ended, the stuck workers: requests still inside a receiver (:mod:`.inflight`).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from chttp_examples.multihost.app import EFFECTS_DDL
from chttp_examples.multihost.database import query
from chttp_examples.multihost.history import read_attempts
from chttp_examples.multihost.netns import Host, Network
from chttp_examples.multihost.patroni import PG_PORT, REST_PORT, TIMINGS, PatroniCluster, PatroniNode, wait_for
from chttp_examples.multihost.loadgen import resend
from chttp_examples.multihost.scenarios import (
    BETWEEN, WARMUP, Outcome, Takeover, answered_between, sender_takeover)
from chttp_examples.multihost.topology import (
    RECEIVER_PORT, STORE_OPTIONS, Load, ReceiverHost, Topology, kill_process)

__all__ = ["PatroniTopology", "DRIVERS", "leader_postgres_killed", "switchover",
           "leader_isolated", "senders_through_switchover", "leader_host_killed_while_lagging",
           "etcd_member_killed", "receiver_host_cut", "figures", "PATRONI_SCENARIOS"]

#: The SQLAlchemy drivers of the receivers, by receiver number modulo their count.
DRIVERS = ("psycopg2", "psycopg")


class PatroniTopology(Topology):
    """Receivers and clients as in :class:`Topology`, the store on a Patroni cluster."""

    def __init__(self, workdir: Path | None = None, *, receivers: int = 3, clients: int = 2,
                 synchronous: bool = True, threads: int = 6, via: str = "multihost",
                 drivers: tuple[str, ...] = DRIVERS) -> None:
        """``via``: how the receivers find the leader — ``"multihost"`` (libpq's multi-host
        URL, ``target_session_attrs=read-write``) or ``"haproxy"`` (one address, HAProxy
        on a host of its own following Patroni's ``GET /primary``: :mod:`.haproxy`).
        ``drivers``: the receivers' SQLAlchemy drivers, by receiver number modulo their
        count; ``("asyncpg",)`` runs the ASGI front end (:mod:`.asgi_receiver`) on each."""
        if via not in ("multihost", "haproxy"):
            raise ValueError("via must be 'multihost' or 'haproxy'")
        if via == "haproxy" and "asyncpg" in drivers:
            raise ValueError("the HAProxy variant runs the WSGI receivers only")
        # Not Topology.__init__: its database host is a primary the test promotes itself.
        import tempfile

        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="chttp-patroni-mh-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.threads = threads
        self.network = Network()
        self.db = None
        self.bouncer = None
        self.receivers = []
        self.loads = []
        self.others = []
        self.cluster: PatroniCluster | None = None
        #: HAProxy's host (``via="haproxy"``), else None.
        self.proxy: Host | None = None
        try:
            self.cluster = PatroniCluster(self.network, synchronous=synchronous,
                                          logs=self.workdir / "database-hosts")
            self._prepare_schema()
            # asyncpg takes neither libpq's connect_timeout nor tcp_user_timeout.
            self.store_urls = [self.cluster.url(driver=driver,
                                                **(STORE_OPTIONS if driver != "asyncpg" else {}))
                               for driver in drivers]
            if via == "haproxy":
                self.store_urls = self._start_haproxy()
            self.store_url = self.store_urls[0]
            for number in range(receivers):
                host = self.network.add_host(f"r{number + 1}")
                self.receivers.append(ReceiverHost(host, f"http://{host.address}:{RECEIVER_PORT}"))
            self.clients = [self.network.add_host(f"c{number + 1}") for number in range(clients)]
            for number in range(receivers):
                self.start_receiver(number)
        except BaseException:
            self.close()
            raise

    def _start_haproxy(self) -> list[str]:
        """HAProxy on host ``lb``; the receivers' store URLs through it (one per driver)."""
        from chttp_examples.multihost.haproxy import PROXY_PORT, start_haproxy

        cluster = self.cluster
        assert cluster is not None
        proxy = self.proxy = self.network.add_host("lb")
        self.others.append(start_haproxy(
            proxy, [(n.name, n.host.address) for n in cluster.nodes], self.workdir,
            pg_port=PG_PORT, rest_port=REST_PORT))
        leader = cluster.leader()
        wait_for(lambda: query(PROXY_PORT, "SELECT host(inet_server_addr()), pg_is_in_recovery()",
                               host=proxy.address) == [(leader.host.address, False)],
                 60, "HAProxy to route to the leader")
        options = "&".join(f"{name}={value}" for name, value in STORE_OPTIONS.items())
        return [f"postgresql+{driver}://postgres@{proxy.address}:{PROXY_PORT}/{self.database}"
                f"?{options}" for driver in DRIVERS]

    def _prepare_schema(self) -> None:
        from chttp_core import migrate

        assert self.cluster is not None
        host, port = self.primary_address()
        migrate.upgrade(f"postgresql://postgres@{host}:{port}/{self.database}")
        query(port, EFFECTS_DDL, database=self.database, host=host)

    def store_url_for(self, number: int) -> str:
        return self.store_urls[number % len(self.store_urls)]

    def receiver_module(self, number: int) -> str:
        """:mod:`.receiver` (WSGI), or :mod:`.asgi_receiver` for an asyncpg store URL."""
        if self.store_url_for(number).startswith("postgresql+asyncpg://"):
            return "asgi_receiver"
        return super().receiver_module(number)

    def primary_address(self) -> tuple[str, int]:
        assert self.cluster is not None
        return self.cluster.leader().host.address, PG_PORT

    def primary_port(self) -> int:
        return PG_PORT

    @property
    def database(self) -> str:
        assert self.cluster is not None
        return self.cluster.database

    def journal_url(self) -> str:
        assert self.cluster is not None
        return self.cluster.url(**STORE_OPTIONS)

    def cut(self, number: int) -> None:
        """Cut receiver ``number``'s whole host: every packet in or out but loopback dropped.

        Not only from the database hosts (as :meth:`Topology.cut`): the clients lose it
        too, so a request in flight there gets no answer at all and the client retries
        through another receiver, while the cut receiver's transaction on the leader is
        left open until PostgreSQL ends it (``idle_in_transaction_session_timeout``).
        DROP, not REJECT, as on a dead link. :meth:`restore` removes the rules.
        """
        host = self.receivers[number].host
        for rule in (["OUTPUT", "!", "-o", "lo"], ["INPUT", "!", "-i", "lo"]):
            subprocess.run(host.command("iptables", "-A", *rule, "-j", "DROP"),
                           check=True, capture_output=True, timeout=30)
            host.cut_rules.append(rule)

    def close(self) -> None:
        try:
            for load in self.loads:
                for process in load.processes:
                    kill_process(process)
            for process in self.others:
                kill_process(process)
            for receiver in self.receivers:
                kill_process(receiver.process)
            if self.cluster is not None:
                self.cluster.destroy()
        finally:
            super().close()


def figures(outcome: Outcome, loads: list[Load]) -> dict[str, Any]:
    """The failover figures of a run, from its history and its report.

    The failover time is from the fault to the first answer that ended the longest
    stretch without any answer after it: the outage the clients saw. (The first answer
    after the fault alone says little: during a switchover or a cut the old leader
    still answers for a while.)
    """
    attempts, _ = read_attempts([path for load in loads for path in load.histories])
    report = outcome.report
    lost = set(report.lost)
    replayed_only = {a.message_id for a in attempts if a.message_id in lost and a.succeeded}
    replayed_only -= {a.message_id for a in attempts
                      if a.message_id in lost and a.succeeded and not a.replayed}
    first_by_replay = replayed_only
    end = outcome.stopped_at or report.end
    moments = [outcome.fault_at] + [t for t in report.answer_times if outcome.fault_at < t < end]
    gaps = [(b - a, b) for a, b in zip(moments, moments[1:])]
    stall, resumed = max(gaps) if gaps else (0.0, outcome.fault_at)
    return {
        "failover time": f"{resumed - outcome.fault_at:.2f} s (longest stall {stall:.2f} s)"
                         if gaps else "never",
        "answers lost": len(report.lost),
        # tests/multihost/test_replay_before_replication.py: a replay of a commit whose
        # wait for the synchronous standby was terminated (the old leader shutting down).
        "lost answers given only by replays": sorted(first_by_replay),
        "effects duplicated": len(report.duplicates),
        "attempts answered 503": sum(1 for a in attempts if a.status == 503),
        "attempts without an HTTP answer": sum(1 for a in attempts if a.status is None),
    }


def _under_load(topo: PatroniTopology, name: str, prefix: str,
                fault: Callable[[PatroniNode, Load], dict[str, Any]], *, workers: int = 3) -> Outcome:
    """Load, a probe lingering on the leader, ``fault(leader)``, more load, the check."""
    cluster = topo.cluster
    assert cluster is not None
    cluster.wait_healthy()
    leader = cluster.leader()
    load = topo.start_load(workers=workers, prefix=prefix)
    try:
        topo.wait_answers(load, WARMUP)
        probe = topo.start_load(workers=1, prefix=f"{prefix}probe", clients=1, count=1, first=0,
                                linger=1.0)
        topo.wait_lingering()
        fault_at = time.time()
        extra = fault(leader, load)
        healed_at = time.time()
        topo.wait_answers(load, BETWEEN, timeout=180)
        stopped_at = time.time()
    except BaseException:
        # The next scenario on this cluster must not run beside this one's clients.
        for process in [p for started in topo.loads for p in started.processes]:
            kill_process(process)
        raise
    report = topo.stop_load_and_check(load, probe)
    new_leader = cluster.leader()
    outcome = Outcome(name, report, load.started_at, fault_at, healed_at, stopped_at=stopped_at)
    outcome.extra = {"leader before": leader.name, "leader after": new_leader.name, **extra,
                     **figures(outcome, [load, probe]),
                     "stuck workers (receiver requests still in flight after the load)":
                         topo.stuck_workers()}
    return outcome


def leader_postgres_killed(topo: PatroniTopology, *, workers: int = 3) -> Outcome:
    """SIGKILL the leader's PostgreSQL mid-request; Patroni brings a primary back by itself."""
    assert topo.cluster is not None
    cluster = topo.cluster

    def fault(leader: PatroniNode, load: Load) -> dict[str, Any]:
        cluster.kill_postgres(leader)
        return {}
    return _under_load(topo, "Patroni: leader's PostgreSQL SIGKILLed", "pgkill", fault,
                       workers=workers)


def switchover(topo: PatroniTopology, *, workers: int = 3) -> Outcome:
    """``patronictl switchover`` to the synchronous standby mid-request."""
    assert topo.cluster is not None
    cluster = topo.cluster

    def fault(leader: PatroniNode, load: Load) -> dict[str, Any]:
        candidate = cluster.sync_standby()
        started = time.monotonic()
        cluster.switchover(candidate)
        return {"patronictl switchover took": f"{time.monotonic() - started:.2f} s"}
    return _under_load(topo, "Patroni: patronictl switchover", "switch", fault, workers=workers)


def leader_isolated(topo: PatroniTopology, *, workers: int = 3, rejoin_timeout: float = 180) -> Outcome:
    """Cut the leader's host from the other database hosts; a new leader is elected.

    The receivers still reach the old leader all along: until Patroni there demotes it
    (it can no longer renew the leader key: its etcd member is in the minority), its
    PostgreSQL accepts connections and transactions, but with synchronous replication
    no commit there is acknowledged (the synchronous standby is on the other side of the
    cut), so nothing a client saw can be lost with it. The cut is removed once a new
    leader serves, and the old leader must rejoin as a replica (``pg_rewind``).
    """
    assert topo.cluster is not None
    cluster = topo.cluster

    old: dict[str, list[tuple[str, str]]] = {}

    def fault(leader: PatroniNode, load: Load) -> dict[str, Any]:
        cut_at = time.monotonic()
        cluster.isolate(leader)
        try:
            new = cluster.leader(skip=leader)
            elected = time.monotonic() - cut_at
            topo.wait_answers(load, BETWEEN, timeout=180)
            # What the old leader holds, read before pg_rewind erases what it alone
            # committed; it may be restarting as a replica (Patroni demoted it): retried
            # for a while, then given up (a figure, not a verdict).
            try:
                old["rows"] = wait_for(
                    lambda: query(PG_PORT, "SELECT message_id, nonce FROM mh_effects",
                                  database=topo.database, host=leader.host.address),
                    15, "the cut-off old leader to answer")
            except TimeoutError:
                pass
        finally:
            cluster.rejoin(leader)
        rejoined_at = time.monotonic()
        cluster.wait_healthy(timeout=rejoin_timeout)
        return {"new leader elected after": f"{elected:.2f} s", "new leader": new.name,
                "old leader rejoined as a replica after": f"{time.monotonic() - rejoined_at:.2f} s"}
    outcome = _under_load(topo, "Patroni: leader's host cut from the other database hosts",
                          "isolate", fault, workers=workers)
    final = topo.check_effects()
    outcome.extra["commits only the cut-off old leader made (none acknowledged)"] = (
        sum(1 for m, nonce in old["rows"] if nonce not in final.get(m, ()))
        if "rows" in old else "not read (the old leader did not answer within 15 s)")
    return outcome


def etcd_member_killed(topo: PatroniTopology, *, workers: int = 3) -> Outcome:
    """SIGKILL the etcd member the leader's Patroni talks to, mid-request.

    The other two members keep the quorum (a new raft leader if the killed one led);
    the leader's Patroni must reach one of them within ``retry_timeout`` to renew the
    leader key, or it demotes itself and another node is elected: either way no
    acknowledged answer may be lost. Once the load has come back the member is started
    again on its data directory and the test waits for all three to be healthy.
    """
    cluster = topo.cluster
    assert cluster is not None

    def fault(leader: PatroniNode, load: Load) -> dict[str, Any]:
        member = cluster.etcd_member_of(leader)
        cluster.kill_etcd(member)
        killed_at = time.monotonic()
        try:
            # The member stays dead longer than the leader key's lease (ttl): a leader
            # that could not renew it through another member would have lost it by then.
            topo.wait_answers(load, BETWEEN, timeout=180)
            time.sleep(max(0.0, TIMINGS["ttl"] + TIMINGS["loop_wait"] - (time.monotonic() - killed_at)))
            kept = cluster.leader(timeout=120)
            moved_to = cluster.etcd_member_of(leader, avoid=member, timeout=120)
        finally:
            cluster.restart_etcd(member)
        wait_for(cluster.etcd_healthy, 120, "the restarted etcd member to rejoin")
        cluster.wait_healthy()
        return {"etcd member killed": f"{member.name}'s"
                + (" (on the leader's own host)" if member is leader else ""),
                "the old leader's Patroni talks then to": f"{moved_to.name}'s",
                "leader kept": kept is leader,
                "etcd member dead for": f"{time.monotonic() - killed_at:.2f} s"}
    return _under_load(topo, "Patroni: the etcd member the leader talks to SIGKILLed",
                       "etcdkill", fault, workers=workers)


def receiver_host_cut(topo: PatroniTopology, *, workers: int = 3, cut_for: float = 6.0) -> Outcome:
    """Cut receiver 0's whole host (iptables DROP) while a request lingers there.

    The probe's request is mid-transaction on the leader through receiver 0 when the
    cut starts: its client gets no answer and retries through another receiver, which
    must wait until PostgreSQL ends the cut-off transaction
    (``idle_in_transaction_session_timeout``, 4 s) before it can claim the message.
    ``cut_for`` outlasts that timeout, and at least :data:`BETWEEN` answers come through
    the other receivers before the cut is removed; then receiver 0 serves again.
    """
    def fault(leader: PatroniNode, load: Load) -> dict[str, Any]:
        cut_at = time.monotonic()
        topo.cut(0)
        try:
            topo.wait_answers(load, BETWEEN, timeout=180)
            time.sleep(max(0.0, cut_for - (time.monotonic() - cut_at)))
        finally:
            topo.restore(0)
        return {"receiver cut": f"{topo.receivers[0].host.name} for "
                                f"{time.monotonic() - cut_at:.1f} s"}
    return _under_load(topo, "Patroni: a receiver host cut mid-request", "rcut", fault,
                       workers=workers)


def leader_host_killed_while_lagging(topo: PatroniTopology, *, workers: int = 3, lag: float = 1.0,
                                     late_retries: int = 30) -> Outcome:
    """The leader's WAL senders stopped for ``lag`` s under load, then its whole host killed.

    Patroni promotes a replica once the leader key expires. With ``synchronous_mode``
    the commits of the lag wait and no client sees them; without it they are
    acknowledged and then lost with the host — the expected failure of
    tests/multihost/test_patroni_async.py. Then ``late_retries`` messages answered
    during the lag are sent again, as by senders that crashed before journaling the
    answer: a lost one runs its handler a second time and answers differently.
    """
    cluster = topo.cluster
    assert cluster is not None
    paused: dict[str, float] = {}

    def fault(leader: PatroniNode, load: Load) -> dict[str, Any]:
        stopped = cluster.pause_replication(leader)
        paused["at"] = time.time()
        time.sleep(lag)
        paused["until"] = time.time()
        cluster.kill_host(leader)
        new = cluster.leader(skip=leader, timeout=120)
        return {"WAL senders stopped": stopped, "new leader": new.name,
                "new leader elected after": f"{time.time() - paused['until']:.2f} s"}

    # The killed host stays dead: the cluster is not healthy afterwards (one per module).
    outcome = _under_load(topo, "Patroni: leader host killed while its replicas lagged",
                          "lagkill", fault, workers=workers)
    late = answered_between(topo.loads[-2], paused["at"], paused["until"])[:late_retries]
    resent = topo.workdir / "history-lagkill-resend.jsonl"
    resend(late, [r.url for r in topo.receivers], str(resent))
    topo.loads[-2].histories.append(resent)
    report = topo.check(topo.loads[-2], topo.loads[-1])
    outcome.report = report
    outcome.extra.update({
        "replication": "synchronous" if cluster.synchronous else "asynchronous",
        "answers acknowledged while the replicas lagged":
            sum(1 for t in report.answer_times if paused["at"] <= t < paused["until"]),
        "late retries of answered messages": len(late),
        "answers lost": len(report.lost),
        "replays that differ from the first answer": len(report.replay_mismatch),
    })
    return outcome


def senders_through_switchover(topo: PatroniTopology, *, steps: int = 4,
                               lease: float = 6.0) -> tuple[Takeover, dict[str, str]]:
    """Two sender hosts over one journal on the Patroni cluster, a switchover between them.

    :func:`~.scenarios.sender_takeover` with the journal (and the receivers' store) on
    the cluster: host A is SIGKILLed while a send lingers in the receiver, then
    ``patronictl switchover`` moves the leader while host B waits for A's lease. B
    must find the journal on the new leader through the multi-host URL, take the oplog
    over once the lease expired, and resend only the in-flight step, under its old id.
    """
    cluster = topo.cluster
    assert cluster is not None
    cluster.wait_healthy()
    before = cluster.leader()
    switched: dict[str, str] = {"leader before": before.name}

    def fault() -> None:
        candidate = cluster.sync_standby()
        cluster.switchover(candidate)
        switched["leader after"] = cluster.leader().name
    takeover = sender_takeover(topo, steps=steps, linger_step=2, lease=lease, fault=fault,
                               tag="-patroni")
    return takeover, switched


#: The Patroni scenarios by name (``python -m chttp_examples.multihost --patroni``).
PATRONI_SCENARIOS: dict[str, Callable[..., Outcome]] = {
    "leader-postgres-killed": leader_postgres_killed,
    "switchover": switchover,
    "etcd-member-killed": etcd_member_killed,
    "receiver-host-cut": receiver_host_cut,
    "leader-isolated": leader_isolated,   # last: __main__ runs the slowest at the end
}
