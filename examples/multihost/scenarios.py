"""Faults under load: each scenario runs the clients, injects one kind of fault, heals it,
and returns the history check with the load figures.

Every scenario also sends a *probe*: one message through receiver 0 whose handler
lingers (``pg_sleep``) inside its transaction, and injects the fault only once
PostgreSQL shows that handler running — so the fault always lands mid-request, not
merely "during the run". The probe's history is checked with the load's.

The waits below schedule the fault (inject after N answers, keep it for S seconds);
nothing in a scenario's verdict depends on how fast anything was.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from chttp_examples.multihost.database import query
from chttp_examples.multihost.history import Report, read_attempts
from chttp_examples.multihost.loadgen import resend
from chttp_examples.multihost.topology import Load, Topology, kill_process

__all__ = ["Outcome", "SCENARIOS", "receivers_killed", "receiver_cut", "pgbouncer_restarted",
           "primary_failover", "sender_takeover", "Takeover", "answered_between", "read_log",
           "wait_log"]

#: How many answers the load must have seen before a fault, and between its steps.
WARMUP = 150
BETWEEN = 80


@dataclass
class Outcome:
    """A scenario's history check and the moments of its fault."""

    name: str
    report: Report
    load_started: float
    fault_at: float
    healed_at: float
    extra: dict[str, Any] = field(default_factory=dict)
    #: When the clients were told to stop (the "after" window ends here, not after the drain).
    stopped_at: float = 0.0

    @property
    def recovery(self) -> float | None:
        """Seconds from the repair until a fresh attempt succeeded again."""
        return self.report.recovered_after(self.healed_at)

    def summary(self) -> str:
        report = self.report
        recovery = self.recovery
        lines = [
            f"== {self.name}",
            report.summary(),
            f"load: {report.rate(self.load_started, self.fault_at):.0f} answers/s before the "
            f"fault, {report.rate(self.fault_at, max(self.healed_at, self.fault_at + 1e-3)):.0f} "
            f"during it ({self.healed_at - self.fault_at:.1f} s), "
            f"{report.rate(self.healed_at, self.stopped_at or report.end):.0f} after; longest stretch without an "
            f"answer {report.longest_gap(self.fault_at, self.stopped_at or None):.2f} s; recovered "
            + (f"{recovery:.2f} s after the repair" if recovery is not None else "never"),
        ]
        lines += [f"{name}: {value}" for name, value in self.extra.items()]
        return "\n".join(lines)


def _probe(topo: Topology, prefix: str, linger: float) -> Load:
    load = topo.start_load(workers=1, prefix=prefix, clients=1, count=1, first=0, linger=linger)
    topo.wait_lingering()
    return load


def receivers_killed(topo: Topology, *, workers: int = 3) -> Outcome:
    """SIGKILL two of the three receivers (one mid-request), then start them again."""
    load = topo.start_load(workers=workers, prefix="kill")
    topo.wait_answers(load, WARMUP)
    probe = _probe(topo, "killprobe", linger=1.0)
    fault_at = time.time()
    topo.kill_receiver(0)
    topo.wait_answers(load, BETWEEN)
    topo.kill_receiver(1)
    topo.wait_answers(load, BETWEEN)          # the one receiver left carries the load
    topo.start_receiver(0)
    topo.start_receiver(1)
    healed_at = time.time()
    topo.wait_answers(load, BETWEEN)
    stopped_at = time.time()
    report = topo.stop_load_and_check(load, probe)
    return Outcome("receivers SIGKILLed", report, load.started_at, fault_at, healed_at,
                   stopped_at=stopped_at)


def receiver_cut(topo: Topology, *, workers: int = 3, cut_for: float = 6.0) -> Outcome:
    """Cut receiver 0 from the database (iptables DROP) mid-request; restore it.

    ``cut_for`` outlasts PostgreSQL's ``idle_in_transaction_session_timeout`` (4 s in
    :class:`~.database.ReplicatedPostgres`), so the cut-off transaction is ended by the
    server and its claim freed for a retry through another receiver.
    """
    load = topo.start_load(workers=workers, prefix="cut")
    topo.wait_answers(load, WARMUP)
    probe = _probe(topo, "cutprobe", linger=1.0)
    fault_at = time.time()
    topo.cut(0)
    time.sleep(cut_for)
    topo.restore(0)
    healed_at = time.time()
    topo.wait_answers(load, BETWEEN)
    stopped_at = time.time()
    report = topo.stop_load_and_check(load, probe)
    return Outcome("receiver cut from the database", report, load.started_at, fault_at,
                   healed_at, {"cut for": f"{cut_for:.0f} s"}, stopped_at)


def pgbouncer_restarted(topo: Topology, *, workers: int = 3) -> Outcome:
    """SIGKILL PgBouncer mid-transaction and start it again (every pooled link drops)."""
    assert topo.bouncer is not None
    load = topo.start_load(workers=workers, prefix="bouncer")
    topo.wait_answers(load, WARMUP)
    probe = _probe(topo, "bouncerprobe", linger=1.0)
    fault_at = time.time()
    topo.bouncer.kill()
    topo.bouncer.start()
    healed_at = time.time()
    topo.wait_answers(load, BETWEEN)
    stopped_at = time.time()
    report = topo.stop_load_and_check(load, probe)
    return Outcome("PgBouncer restarted", report, load.started_at, fault_at, healed_at,
                   stopped_at=stopped_at)


def answered_between(load: Load, start: float, end: float) -> list[tuple[str, str]]:
    """``(id, request body)`` of the messages whose first 2xx arrived in ``[start, end)``."""
    attempts, _ = read_attempts(load.histories)
    bodies = {a.message_id: a.request for a in attempts if a.request is not None}
    answered: dict[str, float] = {}
    for attempt in attempts:
        if attempt.succeeded:
            answered[attempt.message_id] = min(attempt.t1, answered.get(attempt.message_id, attempt.t1))
    chosen = sorted((t, m) for m, t in answered.items() if start <= t < end and m in bodies)
    return [(m, bodies[m]) for _, m in reversed(chosen)]


def primary_failover(topo: Topology, *, workers: int = 3, lag: float = 1.0,
                     late_retries: int = 30) -> Outcome:
    """SIGKILL the primary mid-request while its standby lags; promote the standby.

    The standby is made to lag first (the primary's WAL sender stopped, ``lag`` seconds
    of load): with synchronous replication the commits of that moment wait and no
    client sees them; with asynchronous replication they are acknowledged and then lost
    with the primary. Afterwards the dead primary's data is opened alone to count what
    it had committed that the new primary never got, and the ids whose handler committed
    on both primaries (different nonces). Finally ``late_retries`` messages answered
    around the failure are sent again, as after a sender crash before its journal
    commit: with synchronous replication each gets its first answer replayed; with
    asynchronous replication a lost one runs its handler a second time and answers
    differently (``replay_mismatch`` in the report).
    """
    assert topo.db is not None
    load = topo.start_load(workers=workers, prefix="failover")
    topo.wait_answers(load, WARMUP)
    probe = _probe(topo, "failoverprobe", linger=1.0 + lag)
    topo.db.pause_replication()
    paused_at = time.time()
    time.sleep(lag)
    fault_at = time.time()
    topo.db.kill_primary()
    topo.db.promote()
    healed_at = time.time()
    topo.wait_answers(load, BETWEEN)
    stopped_at = time.time()
    topo.stop_load(load)
    topo.stop_load(probe)
    # Late retries: the messages answered around the failure are sent again, as their
    # senders would after crashing before they journaled the answer (docs/protocol.rst §5).
    late = answered_between(load, paused_at - 0.5, fault_at)[:late_retries]
    resent = topo.workdir / "history-failover-resend.jsonl"
    resend(late, [r.url for r in topo.receivers], str(resent))
    load.histories.append(resent)
    report = topo.check(load, probe)
    old = dict(topo.db.inspect_old_primary("SELECT message_id, nonce FROM mh_effects"))
    new = topo.check_effects()
    only_old = [m for m in old if m not in new]
    twice = [m for m in old if m in new and old[m] not in new[m]]
    extra = {
        "replication": "synchronous" if topo.db.synchronous else "asynchronous",
        "answers acknowledged while the standby lagged":
            sum(1 for t in report.answer_times if paused_at <= t < fault_at),
        "commits only the dead primary had": len(only_old),
        "late retries of answered messages": len(late),
        "ids whose handler committed on both primaries": len(twice),
        "promotion took": f"{healed_at - fault_at:.2f} s",
    }
    return Outcome("primary SIGKILLed, standby promoted", report, load.started_at, fault_at,
                   healed_at, extra, stopped_at)


@dataclass
class Takeover:
    """What two sender hosts did with one oplog (see :func:`sender_takeover`)."""

    steps: int
    a_posts: list[tuple[float, str]]
    b_posts: list[tuple[float, str]]
    b_busy: list[float]
    b_result: list[str] | None
    killed_at: float
    lease_expired_at: float
    effects: dict[str, list[str]]
    a_alive_at_kill: bool = True
    #: The hosts' journal clock offsets (seconds); ``lease_expired_at`` is the
    #: database's clock (a lease's deadline is never a host's clock).
    a_skew: float = 0.0
    b_skew: float = 0.0
    #: What A's own call ended with when it was not killed (``kill_a=False``).
    a_errors: list[str] = field(default_factory=list)
    a_done: bool = False
    a_killed: bool = True

    @property
    def b_took_over_at(self) -> float | None:
        """Real time of B's first POST (None if B sent nothing)."""
        return min((t for t, _ in self.b_posts), default=None)

    @property
    def in_flight(self) -> str:
        """The message id A was sending when it was killed."""
        return self.a_posts[-1][1]

    def summary(self) -> str:
        first_b = min((t for t, _ in self.b_posts), default=None)
        return "\n".join([
            "== senders on two hosts over one journal",
            (f"host A sent {len(self.a_posts)} POSTs and was SIGKILLed with {self.in_flight} in "
             f"flight; its lease expired {self.lease_expired_at - self.killed_at:.2f} s later"
             if self.a_killed else
             f"host A sent {len(self.a_posts)} POSTs, was not killed and ended with "
             f"{self.a_errors or 'its result'}"),
            f"host B was refused (busy) {len(self.b_busy)} times, first sent "
            + (f"{first_b - self.lease_expired_at:.2f} s after the lease expired "
               f"({first_b - self.killed_at:.2f} s after A was killed: the takeover time)"
               if first_b else "nothing")
            + f", {len(self.b_posts)} POSTs, ids {sorted({i for _, i in self.b_posts})}",
            f"distinct message ids {len({i for _, i in self.a_posts + self.b_posts})} for "
            f"{self.steps} steps; effect rows per id {sorted(len(v) for v in self.effects.values())}",
        ])


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_log(path: Path, predicate: Callable[[dict[str, Any]], bool], what: str,
              timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(predicate(record) for record in read_log(path)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}; {path.name} ends with "
                               f"{read_log(path)[-3:]}")
        time.sleep(0.05)


def _posts(log: list[dict[str, Any]]) -> list[tuple[float, str]]:
    return [(r["t"], r["id"]) for r in log if r["event"] == "request" and r["method"] == "POST"]


def sender_takeover(topo: Topology, *, steps: int = 4, linger_step: int = 2,
                    lease: float = 6.0, linger: float = 2.0, a_skew: float = 0.0,
                    b_skew: float = 0.0, kill_a: bool = True, tag: str = "",
                    fault: Callable[[], object] | None = None) -> Takeover:
    """Host A runs a resumable function; host B keeps resuming; A is SIGKILLed mid-send.

    A's step ``linger_step`` lingers in the receiver, and A is killed while it does. B
    (another host name, so a dead owner's lease is not freed early) tries
    ``resume_all()`` all along: it must be refused while A's lease lasts, take the oplog
    over after it expired, replay A's answered steps from the journal and resend the
    in-flight one under its id. A's heartbeat renews its lease all along its run, every
    third of ``lease`` (``--heartbeat``), so a live A keeps it however long a send stalls;
    a dead A's oplog is taken over within about ``lease`` of the kill (the takeover time
    the summary prints).

    ``a_skew`` / ``b_skew`` shift each host's journal clock (seconds; ``--clock-skew``);
    ``kill_a=False`` leaves A running to its end (to see that a skew larger than the
    lease's renewal margin no longer lets B take over a *live* A: B is refused until A
    finished, then finds nothing open and stops); ``tag`` names this run's log files.
    ``fault``, if given, is called right after A is killed (with ``kill_a``): a database
    failover while B waits for A's lease (:mod:`.patroni_faults`).
    """
    hosts = topo.network.hosts
    a_host = hosts.get("s1") or topo.network.add_host("s1")
    b_host = hosts.get("s2") or topo.network.add_host("s2")
    log_a = topo.workdir / f"sender-a{tag}.jsonl"
    log_b = topo.workdir / f"sender-b{tag}.jsonl"
    common = ("--lease", str(lease), "--steps", str(steps), "--linger-step", str(linger_step),
              "--linger", str(linger))
    a = topo.start_sender(a_host, "start", log_a, "--receiver", topo.receivers[0].url, *common,
                          "--clock-skew", str(a_skew))
    wait_log(log_a, lambda r: r["event"] == "request" and r["method"] == "POST", "A's first send")
    b = topo.start_sender(b_host, "resume", log_b, "--until-done", *common,
                          "--clock-skew", str(b_skew))
    if kill_a:
        wait_log(log_b, lambda r: r["event"] == "resume" and r["status"] == "busy", "B refused")
        topo.wait_lingering()
        a_alive = a.poll() is None      # else A lost its lease on its own (a stall) and gave up
        kill_process(a)
        if fault is not None:
            fault()
    else:
        a.wait(60)
        a_alive = True
    killed_at = time.time()
    oplog = next(r["oplog"] for r in read_log(log_b) if r["event"] == "resume")
    host, port = topo.primary_address()
    (expires,) = query(port, "SELECT extract(epoch FROM lease_expires_at) "
                       "FROM chttp_oplogs WHERE id = %s", (oplog,), database=topo.database, host=host)[0]
    b.wait(60)
    kill_process(b)
    a_log, b_log = read_log(log_a), read_log(log_b)
    done = [r for r in b_log if r["event"] == "resume" and r["status"] == "done"]
    ids = {i for _, i in _posts(a_log) + _posts(b_log)}
    effects = {m: n for m, n in topo.check_effects().items() if m in ids}
    return Takeover(
        steps=steps, a_posts=_posts(a_log), b_posts=_posts(b_log),
        b_busy=[r["t"] for r in b_log if r["event"] == "resume" and r["status"] == "busy"],
        b_result=done[0]["result"] if done else None, killed_at=killed_at,
        lease_expired_at=float(expires) if expires is not None else float("nan"),
        effects=effects, a_alive_at_kill=a_alive,
        a_skew=a_skew, b_skew=b_skew,
        a_errors=[r["error"] for r in a_log if r["event"] == "error"],
        a_done=any(r["event"] == "done" for r in a_log), a_killed=kill_a,
    )


#: The scenarios the one command runs, by name: (function, needs its own topology, via).
SCENARIOS: dict[str, tuple[Callable[..., Outcome], str]] = {
    "receivers-killed": (receivers_killed, "pgbouncer"),
    "receiver-cut": (receiver_cut, "pgbouncer"),
    "pgbouncer-restarted": (pgbouncer_restarted, "pgbouncer"),
    "primary-failover": (primary_failover, "multihost"),
}
