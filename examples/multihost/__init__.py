"""Certified HTTP beyond one machine: several hosts, a replicated PostgreSQL, PgBouncer.

Everything runs on this machine: each "host" is a Linux network namespace joined to a
bridge, PostgreSQL (a primary and a streaming standby) and PgBouncer listen on the
bridge, and faults are real (SIGKILL, iptables DROP, promotion). Needs root, ``ip``,
``iptables``, the PostgreSQL server binaries and ``pgbouncer``.

* :mod:`.netns` — namespaces, veth pairs, a bridge, partitions (iptables);
* :mod:`.database` — the primary, its standby (synchronous or not), PgBouncer;
* :mod:`.app` — the certified application whose handler writes one effect row;
* :mod:`.receiver`, :mod:`.loadgen`, :mod:`.sender` — the processes on the hosts;
* :mod:`.history` — the checker: exactly one effect per id, no acknowledged answer lost;
* :mod:`.topology` — all of it together, started and stopped as one;
* :mod:`.patroni`, :mod:`.patroni_faults` — the same receivers on three PostgreSQL nodes
  run by Patroni over a three-member etcd (Debian's ``patroni``, ``etcd-server``), and
  the failovers Patroni decides;
* :mod:`.storm`, :mod:`.patroni_storm` — two sender hosts running a storm of resumable
  functions over one journal on that cluster, through a failover;
* :mod:`.asgi_receiver` — the receiver on the ASGI front end (asyncpg);
  :mod:`.inflight` — the receivers' count of requests still inside (stuck workers);
* ``python -m chttp_examples.multihost`` — the one command (:mod:`.__main__`).
"""

from __future__ import annotations

__all__: list[str] = []
