"""The topology itself: hosts that really are apart, and the receiver through PgBouncer.

PgBouncer in transaction pooling mode hands each transaction whichever server
connection is free, so anything a receiver left in a *session* would leak into other
receivers' transactions. The store sets ``lock_timeout`` (and its saved value) with
``set_config(…, true)``, transaction-local; these tests check on a pool of one server
connection that nothing is left behind, and that the check itself could fail.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import psycopg2
import pytest
import webtest
from chttp_examples.multihost.app import EffectsApp
from chttp_examples.multihost.database import PgBouncer, query
from chttp_examples.multihost.netns import Network, leftovers

from chttp_core.db import make_engine
from chttp_server import CertifiedMiddleware

pytestmark = pytest.mark.slow


def _connects(host, address: str, port: int) -> bool:
    """Whether ``host`` can open a TCP connection to ``address:port`` within 2 s."""
    done = subprocess.run(host.command(
        sys.executable, "-c",
        f"import socket; socket.create_connection(('{address}', {port}), timeout=2)"),
        capture_output=True, text=True, timeout=30)
    return done.returncode == 0


def test_a_network_and_its_partitions_are_removed(multihost_ready):
    network = Network()
    listener = socket.socket()
    try:
        listener.bind((network.gateway, 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        a = network.add_host("a")
        assert _connects(a, network.gateway, port)
        network.cut(a, [port])
        assert not _connects(a, network.gateway, port)     # DROP: the connect times out
        rules = subprocess.run(a.command("iptables", "-S"), capture_output=True, text=True).stdout
        assert rules.count("DROP") == 2
        network.restore(a)
        assert _connects(a, network.gateway, port)
        network.cut(a, [port])             # left in place: destroy() must remove it too
    finally:
        listener.close()
        network.destroy()
    spaces, links = leftovers()
    assert not [name for name in spaces + links if name.startswith(network.tag)]


def test_receivers_are_separate_hosts_on_the_bridge(bouncer_topology):
    topo = bouncer_topology
    receiver = topo.receivers[0]
    # The client host reaches the receiver's namespace over the bridge …
    fetched = subprocess.run(topo.clients[0].command(
        sys.executable, "-c", f"import httpx; print(httpx.get('{receiver.url}/effects').status_code)"),
        capture_output=True, text=True, timeout=30)
    assert fetched.stdout.strip() == "405", fetched.stderr
    # … and the listening socket lives in that namespace, not in this one.
    inside = subprocess.run(receiver.host.command("ss", "-Hltn"), capture_output=True, text=True)
    outside = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True)
    assert f"{receiver.host.address}:8080" in inside.stdout
    assert f"{receiver.host.address}:8080" not in outside.stdout


def _backend_state(port: int, database: str) -> tuple[int, str, str | None]:
    connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname=database)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid(), current_setting('lock_timeout'), "
                           "current_setting('chttp.saved_lock_timeout', true)")
            pid, lock_timeout, saved = cursor.fetchone()
            return pid, lock_timeout, saved
    finally:
        connection.close()


def test_the_store_leaves_no_session_state_in_a_transaction_pooled_connection(bouncer_topology, tmp_path):
    topo = bouncer_topology
    assert topo.db is not None
    bouncer = PgBouncer(listen=topo.network.gateway, backend_port=topo.db.primary.port,
                        pool_size=1).start()
    try:
        url = f"postgresql://postgres@127.0.0.1:{bouncer.port}/{topo.db.database}"
        before = _backend_state(bouncer.port, topo.db.database)
        engine = make_engine(url)
        app = webtest.TestApp(CertifiedMiddleware(EffectsApp(), engine=engine, claim_timeout=0.5))
        first = app.post("/effects", '{"n": 1}', headers={"X-Message-ID": "pooled-1"})
        replay = app.post("/effects", '{"n": 1}', headers={"X-Message-ID": "pooled-1"})
        assert replay.headers["Idempotent-Replayed"] == "true" and replay.body == first.body
        engine.dispose()
        after = _backend_state(bouncer.port, topo.db.database)
        assert after[0] == before[0]                  # one server connection served them all
        assert after[1] == before[1] == "0"            # the server default, not the claim's
        assert after[2] in (None, "")                  # the saved value did not outlive its transaction

        # The check can fail: a session-level SET through the pool is seen by the next client.
        connection = psycopg2.connect(host="127.0.0.1", port=bouncer.port, user="postgres",
                                      dbname=topo.db.database)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '123ms'")
        connection.close()
        assert _backend_state(bouncer.port, topo.db.database)[1] == "123ms"
    finally:
        bouncer.stop()


def test_a_concurrent_duplicate_waits_on_the_claim_through_pgbouncer(bouncer_topology):
    """The claim's bounded wait (a row lock + transaction-local lock_timeout) works pooled."""
    topo = bouncer_topology
    assert topo.bouncer is not None and topo.db is not None
    engine = make_engine(topo.bouncer.url(topo.db.database).replace(topo.network.gateway, "127.0.0.1"))
    app = webtest.TestApp(CertifiedMiddleware(EffectsApp(), engine=engine, claim_timeout=0.3))
    body = '{"n": 1, "linger": 1.5}'
    headers = {"X-Message-ID": "pooled-dup"}
    results: list[webtest.TestResponse] = []
    slow = threading.Thread(target=lambda: results.append(app.post("/effects", body, headers=headers)))
    slow.start()
    try:
        topo.wait_lingering()
        busy = app.post("/effects", body, headers=headers, status=409)
        assert busy.json["type"].endswith("message-in-progress") and busy.headers["Retry-After"]
    finally:
        slow.join(30)
    replay = app.post("/effects", body, headers=headers)
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.body == results[0].body
    rows = query(topo.db.primary.port, "SELECT count(*) FROM mh_effects WHERE message_id = 'pooled-dup'",
                 database=topo.db.database)
    assert rows[0][0] == 1
    # lock_timeout is back to the server's default on the pooled connections.
    assert _backend_state(topo.bouncer.port, topo.db.database)[1] == "0"
    engine.dispose()
