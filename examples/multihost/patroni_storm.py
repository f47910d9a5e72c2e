"""Two sender hosts, one journal on the Patroni cluster, a storm of functions, a failover.

Issue 21, item 3. Hosts ``s3`` and ``s4`` each run :mod:`.storm` (``functions``
resumable functions on ``workers`` threads, ``resume_all()`` all along) over one journal
on the cluster, through the multi-host URL (``target_session_attrs=read-write``); each
function persists a token and posts it to a receiver whose store is on the same
cluster. Once a third of the functions have finished and a handler lingers in its
transaction on the leader, the leader's PostgreSQL is SIGKILLed (Patroni brings a
primary back by itself, usually restarting it in place) or ``patronictl switchover``
moves the leader (:func:`storm_through_failover`). Runs cut off by the outage leave their oplogs
open with their leases held; when a lease expires either host resumes the oplog.

:func:`check` then reads the journal, the receivers' store and the effects on the leader
of the end, and the hosts' logs: every function done, one effect per function and per
message id, the token and nonce each function returned equal to the effect the
receiver kept, every journaled send's fingerprint equal to the one the receiver stored
for its id, and no id in two oplogs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chttp_client import codec
from chttp_examples.multihost.database import query
from chttp_examples.multihost.scenarios import read_log, wait_log
from chttp_examples.multihost.storm import STORM_FUNCTION
from chttp_examples.multihost.topology import kill_process

__all__ = ["Storm", "FAULTS", "storm_through_failover", "check"]

_HOSTS = ("s3", "s4")


@dataclass
class Storm:
    """What the two hosts did and what the cluster holds at the end."""

    functions: int
    #: The first function's key (the storms of earlier runs on the cluster used the keys below).
    first: int
    fault_at: float
    logs: dict[str, list[dict[str, Any]]]
    exit_codes: dict[str, int | None]
    #: oplog id → state; key → the effect rows (message id, nonce, token); sends.
    oplog_states: dict[str, str]
    effects: dict[int, list[tuple[str, str, str]]]
    journaled: list[tuple[str, str, str]]        # (oplog id, message id, fingerprint)
    stored: dict[str, list[str]]                 # message id → fingerprints at the receivers
    #: key → the results the journal recorded for it (a finished oplog's value).
    recorded: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    #: The sender hosts SIGKILLed at the fault (their calls not yet made never happen).
    killed: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def own_keys(self) -> dict[str, range]:
        """Each host's keys: the functions it calls itself."""
        return {h: range(self.first + i * self.functions, self.first + (i + 1) * self.functions)
                for i, h in enumerate(_HOSTS)}

    def required(self) -> set[int]:
        """The functions that must finish: all, but of a killed host only those it started
        (an oplog or an effect of theirs exists; the calls it never made are not lost)."""
        keys = set(range(self.first, self.first + 2 * self.functions))
        for host in self.killed:
            keys -= set(self.own_keys()[host]) - set(self.recorded) - set(self.effects)
        return keys

    def results(self) -> dict[int, list[dict[str, Any]]]:
        """key → every result a host reported for it (own call or resume)."""
        found: dict[int, list[dict[str, Any]]] = {}
        for records in self.logs.values():
            for r in records:
                if r["event"] == "call-done" or (r["event"] == "resume" and r["status"] == "done"):
                    found.setdefault(r["result"]["key"], []).append(r["result"])
        return found

    def figures(self) -> dict[str, Any]:
        responses = [r for records in self.logs.values() for r in records
                     if r["event"] == "response" and r["method"] == "POST"]
        finishes = sorted(r["t"] for records in self.logs.values() for r in records
                          if r["event"] == "call-done"
                          or (r["event"] == "resume" and r["status"] == "done"))
        after = [self.fault_at] + [t for t in finishes if t > self.fault_at]
        gaps = [(b - a, b) for a, b in zip(after, after[1:])]
        stall, resumed = max(gaps) if gaps else (0.0, self.fault_at)
        own = self.own_keys()
        resumed_by: dict[str, int] = {}
        for host, records in self.logs.items():
            for r in records:
                if r["event"] == "resume" and r["status"] == "done":
                    origin = next(h for h, keys in own.items() if r["result"]["key"] in keys)
                    label = f"{host} (own)" if origin == host else f"{host} (the other host's)"
                    resumed_by[label] = resumed_by.get(label, 0) + 1
        errors: dict[str, int] = {}
        for records in self.logs.values():
            for r in records:
                if r["event"] == "call-error":
                    errors[r["error"]] = errors.get(r["error"], 0) + 1
        statuses: dict[int, int] = {}
        for r in responses:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        return {
            "functions": f"{2 * self.functions} ({self.functions} to call on each host)"
                         + "".join(f"; {host} SIGKILLed at the fault, {len(self.required() & set(own[host]))}"
                                   f" of its functions begun" for host in self.killed),
            "failover time": (f"{resumed - self.fault_at:.2f} s (the end of the longest stretch "
                              f"without a function finishing, {stall:.2f} s)") if gaps else "never",
            "calls made again (journal unavailable before the oplog was created)": sum(
                1 for records in self.logs.values() for r in records if r["event"] == "call-again"),
            "calls made again that found their oplog created (a first COMMIT made, its "
            "answer lost)": sum(1 for records in self.logs.values() for r in records
                               if r["event"] == "call-already-created"),
            "own calls that ended in an error (the oplog left to a resume)": errors or 0,
            "functions finished by resume_all()": resumed_by or 0,
            "resume_all() rounds that found the journal unavailable": sum(
                1 for records in self.logs.values() for r in records if r["event"] == "unavailable"),
            "functions whose host saw the result's commit fail, done all the same (commit "
            "made, its answer lost)": len(set(self.recorded) - set(self.results())),
            "POSTs answered 503": statuses.get(503, 0),
            "POST answers by status": dict(sorted(statuses.items())),
            "storm took": f"{max(finishes) - min(r['t'] for rs in self.logs.values() for r in rs):.1f} s"
                          if finishes else "n/a",
        }

    def summary(self) -> str:
        return "\n".join(["== Patroni: two sender hosts, one journal, a storm through a failover"]
                         + [f"{name}: {value}" for name, value in {**self.extra, **self.figures()}.items()])


#: The faults :func:`storm_through_failover` can inject, by name.
FAULTS = {"postgres-sigkill": "the leader's PostgreSQL SIGKILLed",
          "switchover": "patronictl switchover to the synchronous standby"}


def storm_through_failover(topo: Any, *, fault: str = "postgres-sigkill", functions: int = 120,
                           workers: int = 4, lease: float = 6.0, kill_sender: bool = False) -> Storm:
    """Both hosts' storms, ``fault`` (one of :data:`FAULTS`) a third of the way through.

    ``kill_sender``: host ``s3``'s process is SIGKILLed right after the fault too, so its
    runs cut off mid-function can only be finished by ``s4`` (after their leases expire).
    """
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {sorted(FAULTS)}")
    cluster = topo.cluster
    assert cluster is not None
    cluster.wait_healthy()
    leader = cluster.leader()
    # Earlier storms on this cluster: their oplogs and keys are not this run's.
    earlier = read(topo, 0, 0, 0.0, {}, {})
    first = 1 + max(earlier.effects, default=-1)
    logs = {name: topo.workdir / f"storm-{first}-{name}.jsonl" for name in _HOSTS}
    processes = {}
    for number, name in enumerate(_HOSTS):
        host = topo.network.hosts.get(name) or topo.network.add_host(name)
        processes[name] = topo.start_sender(
            host, None, logs[name], *[a for r in topo.receivers for a in ("--receiver", r.url)],
            "--functions", str(functions), "--first", str(first + number * functions),
            "--workers", str(workers), "--lease", str(lease), module="storm")
    try:
        def finished(path: Path) -> int:
            return sum(1 for r in read_log(path) if r["event"] == "call-done")
        deadline = time.monotonic() + 90
        while sum(finished(p) for p in logs.values()) < (2 * functions) // 3:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the storm did not get a third through: {read_log(logs['s3'])[-3:]}")
            time.sleep(0.05)
        topo.wait_lingering()
        fault_at = time.time()
        if fault == "switchover":
            cluster.switchover(cluster.sync_standby())
        else:
            cluster.kill_postgres(leader)
        killed = (_HOSTS[0],) if kill_sender else ()
        for name in killed:
            kill_process(processes[name])
        codes: dict[str, int | None] = {}
        for name, process in processes.items():
            try:
                codes[name] = process.wait(170)
            except Exception:
                codes[name] = None
    finally:
        for process in processes.values():
            kill_process(process)
    for name, path in logs.items():
        if name in killed:
            continue
        wait_log(path, lambda r: r["event"] in ("finished", "timed-out"), "the storm's end", timeout=5)
    storm = read(topo, functions, first, fault_at, {n: read_log(p) for n, p in logs.items()}, codes,
                 skip=set(earlier.oplog_states))
    storm.killed = killed
    storm.extra = {"fault": FAULTS[fault] + (f", and sender host {', '.join(killed)} SIGKILLed"
                                             if killed else ""),
                   "leader before": leader.name,
                   "leader after": cluster.leader().name,
                   "stuck workers (receiver requests still in flight after the storm)":
                       topo.stuck_workers()}
    return storm


def read(topo: Any, functions: int, first: int, fault_at: float, logs: dict[str, list[dict[str, Any]]],
         codes: dict[str, int | None], *, skip: set[str] = set()) -> Storm:
    """The journal, the receivers' store and the effects on the leader of the end.

    ``skip``: oplogs of earlier storms; ``functions == 0``: every key's effects.
    """
    host, port = topo.primary_address()

    def rows(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return list(query(port, sql, params, database=topo.database, host=host))
    states: dict[str, str] = {}
    recorded: dict[int, list[dict[str, Any]]] = {}
    for oplog, state, result in rows("SELECT id, state, result FROM chttp_oplogs WHERE function = %s",
                                     STORM_FUNCTION):
        if oplog in skip:
            continue
        states[str(oplog)] = str(state)
        if state == "done" and result:
            value = codec.decode(json.loads(result).get("value"), where=f"oplog {oplog}")
            recorded.setdefault(int(value["key"]), []).append(value)
    journaled = [(str(o), str(m), str(f)) for o, m, f in rows(
        "SELECT s.oplog_id, s.message_id, s.fingerprint FROM chttp_oplog_steps s "
        "JOIN chttp_oplogs o ON o.id = s.oplog_id WHERE o.function = %s AND s.kind = 'send'",
        STORM_FUNCTION) if o in states]
    stored: dict[str, list[str]] = {}
    for message_id, digest in rows("SELECT message_id, fingerprint FROM chttp_messages "
                                   "WHERE message_id = ANY(%s)", [m for _, m, _ in journaled]):
        stored.setdefault(message_id, []).append(digest)
    effects: dict[int, list[tuple[str, str, str]]] = {}
    for message_id, nonce, payload in rows("SELECT message_id, nonce, payload FROM mh_effects "
                                           "WHERE payload LIKE '%%\"token\"%%'"):
        body = json.loads(payload)
        if not isinstance(body, dict) or "function" not in body:
            continue
        if functions and not first <= int(body["function"]) < first + 2 * functions:
            continue
        effects.setdefault(int(body["function"]), []).append((message_id, nonce, body["token"]))
    return Storm(functions, first, fault_at, logs, codes, states, effects, journaled, stored, recorded)


def check(storm: Storm) -> list[str]:
    """Every violation found (empty: 0 run twice, 0 lost, no id with two bodies)."""
    problems = []
    keys = sorted(storm.required())
    total = len(keys)
    if len(storm.oplog_states) != total or set(storm.oplog_states.values()) != {"done"}:
        counts: dict[str, int] = {}
        for state in storm.oplog_states.values():
            counts[state] = counts.get(state, 0) + 1
        problems.append(f"oplogs: {len(storm.oplog_states)} of {total}, by state {counts}")
    twice = {k: v for k, v in storm.effects.items() if len(v) != 1}
    if twice:
        problems.append(f"functions with other than one effect: {dict(list(twice.items())[:5])}")
    missing = [k for k in keys if k not in storm.effects]
    if missing:
        problems.append(f"functions without an effect: {missing[:10]} ({len(missing)})")
    # The journal's record of each result is what counts: a host whose commit of the
    # result lost its answer (the connection closed by the fault) cannot report it,
    # though the commit may have happened (then no resume runs it again).
    reported = storm.results()
    for key in keys:
        got = storm.recorded.get(key, [])
        if len(got) != 1:
            problems.append(f"function {key} has {len(got)} results in the journal")
            continue
        effect = storm.effects.get(key, [])
        if effect and (got[0]["message_id"], got[0]["nonce"], got[0]["token"]) != effect[0]:
            problems.append(f"function {key} returned {got[0]}, the receiver kept {effect[0]}")
        if any(r != got[0] for r in reported.get(key, [])) or len(reported.get(key, [])) > 1:
            problems.append(f"function {key}: the hosts reported {reported.get(key)}, the "
                            f"journal holds {got[0]}")
    by_id: dict[str, list[str]] = {}
    for oplog, message_id, digest in storm.journaled:
        by_id.setdefault(message_id, []).append(oplog)
        if storm.stored.get(message_id) != [digest]:
            problems.append(f"{message_id}: journaled fingerprint {digest[:12]}, the receiver "
                            f"stored {storm.stored.get(message_id)}")
    shared = {m: o for m, o in by_id.items() if len(o) != 1}
    if shared:
        problems.append(f"message ids in more than one oplog or step: {shared}")
    if len(by_id) != total:
        problems.append(f"{len(by_id)} message ids journaled for {total} functions")
    posted = {r["id"] for records in storm.logs.values() for r in records
              if r["event"] == "request" and r["method"] == "POST"}
    if posted - set(by_id):
        problems.append(f"ids posted but not journaled: {sorted(posted - set(by_id))[:5]}")
    if any(code != 0 for host, code in storm.exit_codes.items() if host not in storm.killed):
        problems.append(f"the hosts' exit codes: {storm.exit_codes}")
    return problems
