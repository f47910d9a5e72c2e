"""The one command: the whole multi-host topology, every fault under load, one report.

::

    sudo python -m chttp_examples.multihost            # from a checkout: python -m examples.multihost
    sudo python -m chttp_examples.multihost --only primary-failover --no-async
    sudo python -m chttp_examples.multihost --patroni   # Patroni + etcd decide the failovers

Builds the topology of :mod:`.topology` on this machine (network namespaces, a
PostgreSQL primary with a synchronous standby, PgBouncer, three receiver hosts, two
client hosts), runs each fault scenario of :mod:`.scenarios` under load with its
history check, then the two-sender takeover, then — unless ``--no-async`` — the same
primary failover with *asynchronous* replication, which is expected to lose answers.
Prints each scenario's report and exits 0 when every synchronous scenario held and the
asynchronous demonstration lost what it should. About a minute and a half.

``--patroni`` runs instead the stack of :mod:`.patroni_faults`: three PostgreSQL nodes
run by Patroni (``synchronous_mode``) over a three-member etcd, each on its own host,
the receivers on the multi-host URL; the leader's PostgreSQL SIGKILLed, a ``patronictl``
switchover, the etcd member the leader talks to SIGKILLed, a receiver host cut
mid-request, two senders over one journal through a switchover, a storm of 240
resumable functions on two sender hosts through the leader's PostgreSQL SIGKILLed
(:mod:`.patroni_storm`), the leader's host cut from the others (needs Debian's
``patroni`` and ``etcd-server``). About four minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chttp_examples.multihost",
                                     description=__doc__.split("::")[0].strip() if __doc__ else None)
    parser.add_argument("--only", action="append", metavar="SCENARIO",
                        help="run only this scenario (repeat): receivers-killed, receiver-cut, "
                             "pgbouncer-restarted, primary-failover, senders")
    parser.add_argument("--no-async", action="store_true",
                        help="skip the asynchronous-replication demonstration")
    parser.add_argument("--patroni", action="store_true",
                        help="the Patroni + etcd cluster and its faults instead (see above)")
    parser.add_argument("--workers", type=int, default=3, help="worker threads per client host")
    parser.add_argument("--workdir", type=Path, help="where logs and histories go (default: a temp dir)")
    args = parser.parse_args(argv)

    from chttp_examples.multihost.database import PgBouncerNotFound, find_pgbouncer
    from chttp_examples.multihost.netns import NetworkUnavailable, require_network
    from chttp_examples.multihost.scenarios import SCENARIOS, primary_failover, sender_takeover
    from chttp_examples.multihost.topology import Topology

    from chttp_server.testing import PostgresNotFound, find_postgres_bin

    try:
        require_network()
        find_pgbouncer()
        find_postgres_bin()
    except (NetworkUnavailable, PgBouncerNotFound, PostgresNotFound) as error:
        print(f"cannot build the topology: {error}", file=sys.stderr)
        return 2

    if args.patroni:
        return _patroni(args.workers, args.workdir)
    wanted = set(args.only or [*SCENARIOS, "senders"])
    unknown = wanted - {*SCENARIOS, "senders"}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chttp-multihost-"))
    started = time.monotonic()
    failures: list[str] = []
    print(f"logs and histories: {workdir}", flush=True)

    bouncer_runs = [name for name, (_, via) in SCENARIOS.items() if via == "pgbouncer" and name in wanted]
    if bouncer_runs or "senders" in wanted:
        with Topology(workdir / "pgbouncer", via="pgbouncer") as topo:
            print("topology: 3 receivers -> PgBouncer (transaction mode) -> primary "
                  "+ synchronous standby", flush=True)
            for name in bouncer_runs:
                outcome = SCENARIOS[name][0](topo, workers=args.workers)
                print(outcome.summary() + "\n", flush=True)
                if not outcome.report.ok:
                    failures.append(name)
            if "senders" in wanted:
                takeover = sender_takeover(topo)
                print(takeover.summary() + "\n", flush=True)
                first_b = min((t for t, _ in takeover.b_posts), default=None)
                if (first_b is None or first_b < takeover.lease_expired_at
                        or len({i for _, i in takeover.a_posts + takeover.b_posts}) != takeover.steps
                        or any(len(n) != 1 for n in takeover.effects.values())):
                    failures.append("senders")

    if "primary-failover" in wanted:
        for synchronous in ([True] if args.no_async else [True, False]):
            kind = "synchronous" if synchronous else "asynchronous"
            with Topology(workdir / f"failover-{kind}", via="multihost", synchronous=synchronous) as topo:
                print(f"topology: 3 receivers -> libpq multi-host URL (target_session_attrs="
                      f"read-write) -> primary + {kind} standby", flush=True)
                outcome = primary_failover(topo, workers=args.workers)
                print(outcome.summary(), flush=True)
                if synchronous and not outcome.report.ok:
                    failures.append("primary-failover")
                if not synchronous:
                    lost = len(outcome.report.lost)
                    print(f"expected: asynchronous replication lost {lost} acknowledged answers "
                          "(docs/scale.rst: use synchronous replication)\n", flush=True)
                    if not lost:
                        failures.append("asynchronous demonstration (nothing was lost)")
                else:
                    print()

    print(f"{'FAILED: ' + ', '.join(failures) if failures else 'ALL PASSED'} "
          f"in {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


def _patroni(workers: int, workdir: Path | None) -> int:
    """``--patroni``: every Patroni scenario on one cluster, each history checked."""
    from chttp_examples.multihost.patroni import PatroniNotFound, find_patroni
    from chttp_examples.multihost.patroni_faults import (
        PATRONI_SCENARIOS, PatroniTopology, senders_through_switchover)
    from chttp_examples.multihost.patroni_storm import check, storm_through_failover

    try:
        find_patroni()
    except PatroniNotFound as error:
        print(f"cannot build the Patroni cluster: {error}", file=sys.stderr)
        return 2
    workdir = workdir or Path(tempfile.mkdtemp(prefix="chttp-multihost-patroni-"))
    started = time.monotonic()
    failures: list[str] = []
    print(f"logs and histories: {workdir}", flush=True)
    with PatroniTopology(workdir) as topo:
        print("topology: 3 receivers -> libpq multi-host URL (target_session_attrs=read-write) "
              "-> 3 PostgreSQL nodes run by Patroni (synchronous_mode) over a 3-member etcd",
              flush=True)
        names = list(PATRONI_SCENARIOS)
        for name in names[:-1] + ["senders", "storm", names[-1]]:   # the host cut last: the slowest
            if name == "storm":
                storm = storm_through_failover(topo)
                problems = check(storm)
                print(storm.summary() + "".join(f"\nVIOLATION: {p}" for p in problems) + "\n",
                      flush=True)
                if problems:
                    failures.append("storm")
                continue
            if name == "senders":
                takeover, leaders = senders_through_switchover(topo)
                print(takeover.summary() + f"\nleaders: {leaders}\n", flush=True)
                if (not takeover.b_posts or len({i for _, i in takeover.a_posts + takeover.b_posts})
                        != takeover.steps or any(len(n) != 1 for n in takeover.effects.values())):
                    failures.append("senders")
                continue
            outcome = PATRONI_SCENARIOS[name](topo, workers=workers)
            print(outcome.summary() + "\n", flush=True)
            if not outcome.report.ok:
                failures.append(name)
    print(f"{'FAILED: ' + ', '.join(failures) if failures else 'ALL PASSED'} "
          f"in {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
