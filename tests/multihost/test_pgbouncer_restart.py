"""Restarting the topology's PgBouncer: the old one is gone, the new one really listens.

The PgBouncer-restart failover scenario once stalled for good: :meth:`PgBouncer.kill`
reaped the ``runuser`` wrapper while PgBouncer itself was still exiting with its
listening socket open, :meth:`PgBouncer.start` took a connection to that dying listener
for "ready", and the new PgBouncer failed to bind ("Address already in use", FATAL
"nowhere to listen on") and exited. Nothing listened on the port afterwards; every
receiver answered 503 and the load never came back. These tests pin both halves.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import pytest
from chttp_examples.multihost.database import PgBouncer, process_tree, query

from chttp_server.testing import free_port

pytestmark = pytest.mark.slow

#: PgBouncer here serves only its admin console: no server connection is ever opened.
_LISTEN = "127.0.0.2"


@pytest.fixture
def bouncer(multihost_ready: None) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(listen=_LISTEN, backend_port=free_port())
    try:
        yield bouncer
    finally:
        bouncer.stop()


def _running(pid: int) -> bool:
    """Whether a thread of ``pid`` still runs: a zombie leader whose other threads are
    still exiting keeps the files they share (the listening socket) open."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    states = []
    for task in tasks:
        try:
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except OSError:
            continue
    return any(state not in ("Z", "X") for state in states)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_start_fails_loudly_when_something_else_holds_the_port(bouncer: PgBouncer) -> None:
    """A listener already on the port (a dying PgBouncer, anything) is not "started".

    Before the fix start() connected to that listener, returned, and the PgBouncer it
    had started exited a moment later; now it waits for its own process to bind and
    reports the failure in PgBouncer's words.
    """
    squatters = []
    for address in (_LISTEN, "127.0.0.1"):
        squatter = socket.socket()
        squatter.bind((address, bouncer.port))
        squatter.listen()
        squatters.append(squatter)
    try:
        with pytest.raises(RuntimeError, match="nowhere to listen"):
            bouncer.start()
    finally:
        for squatter in squatters:
            squatter.close()
    bouncer.start()     # the port is free again: a start succeeds
    assert query(bouncer.port, "SHOW VERSION", database="pgbouncer")


def test_kill_returns_only_once_pgbouncer_is_gone_and_a_restart_serves(bouncer: PgBouncer) -> None:
    """After kill() no process of the old PgBouncer is alive and its port refuses.

    Without the fix kill() often returned with a thread of PgBouncer still exiting
    (its leader already a zombie, the listening socket still open): this test failed
    in each of 4 runs against the old kill(), each time within its twenty rounds.
    """
    for round_ in range(20):
        bouncer.start()
        assert bouncer.process is not None
        tree = process_tree(bouncer.process.pid)
        assert len(tree) >= 1
        bouncer.kill()
        assert [pid for pid in tree if _running(pid)] == []
        assert _refused(bouncer.port), f"round {round_}: the killed PgBouncer still listens"
    bouncer.start()
    assert query(bouncer.port, "SHOW VERSION", database="pgbouncer")
