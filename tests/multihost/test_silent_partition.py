"""A receiver silently cut from PostgreSQL: every request answered 503, then recovery.

The receiver (waitress, ``CertifiedMiddleware``, a handler writing an effect row) runs
in a network namespace of its own and reaches PostgreSQL over a veth and a bridge. Its
store URL carries no options: the bounds come from ``chttp_core.db.make_engine``'s
defaults (``connect_timeout``, ``tcp_user_timeout``, keepalives). Then ``iptables -j
DROP`` between the two — packets vanish, nothing is reset — while requests arrive:

* pooled connections that were established (and one request lingering mid-statement)
  must fail, not wait on TCP retransmits for ~15 minutes;
* new connections must fail after ``connect_timeout``;
* every request is answered 503 ``store-unavailable`` with ``Retry-After`` (docs/
  protocol.rst §4) before the client's own timeout, and no worker thread stays stuck
  (after the heal, as many concurrent requests as the receiver has threads all pass);
* once the rules are removed the receiver recovers by itself: retries are answered, with one
  effect row per message id.

The client's timeout (``ANSWER_BOUND``) is the bound the test asserts — far below the
kernel's retransmission horizon, far above the configured timeouts, so no timing on a
loaded machine makes it flaky. The measured times are printed (``-s``).
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import httpx
import pytest
from chttp_examples.multihost.app import EFFECTS_DDL
from chttp_examples.multihost.database import query
from chttp_examples.multihost.netns import Host, Network, NetworkUnavailable, require_network
from chttp_examples.multihost.topology import RECEIVER_PORT, kill_process

from chttp_core.db import POSTGRESQL_CONNECT_DEFAULTS
from chttp_server.testing import PostgresCluster, PostgresNotFound, find_postgres_bin

pytestmark = pytest.mark.slow

THREADS = 4
#: Seconds a client waits for any answer. A hung request (no bound) would exceed it.
ANSWER_BOUND = 60.0


class Rig:
    def __init__(self, network: Network, cluster: PostgresCluster, host: Host, workdir: Any) -> None:
        self.network, self.cluster, self.host, self.workdir = network, cluster, host, workdir
        self.url = f"http://{host.address}:{RECEIVER_PORT}"
        self.log = workdir / "receiver.log"
        with open(self.log, "w") as stderr:
            self.process = subprocess.Popen(
                host.command(sys.executable, "-m", "chttp_examples.multihost.receiver",
                             "--db", f"postgresql://postgres@{network.gateway}:{cluster.port}/mh",
                             "--host", host.address, "--port", str(RECEIVER_PORT),
                             "--threads", str(THREADS)),
                stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], 60)
        if not readable or "serving" not in self.process.stdout.readline():
            kill_process(self.process)
            raise RuntimeError(f"the receiver did not start: {self.log.read_text()[-2000:]}")

    def post(self, message_id: str, linger: float = 0) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        # Requests come from the root namespace over the bridge to the receiver's port;
        # the cut only drops the PostgreSQL port, so HTTP keeps flowing.
        response = httpx.post(f"{self.url}/effects", json={"linger": linger},
                              headers={"X-Message-ID": message_id}, timeout=ANSWER_BOUND)
        return response, time.monotonic() - started

    def effects(self) -> dict[str, int]:
        rows = query(self.cluster.port, "SELECT message_id, count(*) FROM mh_effects GROUP BY 1",
                     database="mh")
        return {message_id: count for message_id, count in rows}


@pytest.fixture
def rig(tmp_path) -> Iterator[Rig]:
    try:
        require_network()
        find_postgres_bin()
    except (NetworkUnavailable, PostgresNotFound) as error:
        pytest.skip(f"silent partition needs namespaces and PostgreSQL: {error}")
    with Network() as network:
        cluster = PostgresCluster(settings={
            "listen_addresses": f"127.0.0.1,{network.gateway}", "fsync": "off",
            # The server's side of a cut-off transaction: ended, so its claim is freed.
            "idle_in_transaction_session_timeout": "4s", "tcp_user_timeout": "5000",
        })
        with open(cluster.data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {network.subnet}.0/24 trust\n")
        rig = None
        try:
            cluster.start()
            query(cluster.port, 'CREATE DATABASE "mh"')
            from chttp_core import migrate

            migrate.upgrade(f"postgresql://postgres@127.0.0.1:{cluster.port}/mh")
            query(cluster.port, EFFECTS_DDL, database="mh")
            rig = Rig(network, cluster, network.add_host("r1"), tmp_path)
            yield rig
        finally:
            if rig is not None:
                kill_process(rig.process)
            cluster.destroy()


def assert_store_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == "store-unavailable"
    assert int(response.headers["Retry-After"]) >= 1


def test_silent_partition_is_answered_503_within_the_bound_then_recovers(rig):
    with ThreadPoolExecutor(max_workers=2 * THREADS) as pool:
        # Warm the pool: THREADS connections established and idle in it.
        warm = list(pool.map(lambda n: rig.post(f"warm-{n}", linger=0.3)[0], range(THREADS)))
        assert [r.status_code for r in warm] == [200] * THREADS

        # One request lingering inside its transaction when the cut strikes.
        in_flight = pool.submit(rig.post, "inflight", 2.0)
        time.sleep(0.8)
        rig.network.cut(rig.host, [rig.cluster.port])
        cut_at = time.monotonic()

        # A wave while the pooled connections are still "up" (their pre-ping goes out into
        # the void), then a second wave that must open new connections (connect_timeout).
        first = list(pool.map(lambda n: rig.post(f"p1-{n}"), range(THREADS)))
        second = list(pool.map(lambda n: rig.post(f"p2-{n}"), range(THREADS)))
        lingering, lingering_took = in_flight.result()
        partition_answers = [r for r, _ in first + second] + [lingering]
        took = [t for _, t in first + second] + [lingering_took]
        for response in partition_answers:
            assert_store_unavailable(response)
        rig.network.restore(rig.host)
        healed_at = time.monotonic()

        # Recovery by itself: retry one id until 201 (Retry-After honoured loosely).
        recovered_after = None
        while recovered_after is None:
            response, _ = rig.post("p1-0")
            if response.status_code == 200:
                recovered_after = time.monotonic() - healed_at
            else:
                assert_store_unavailable(response)
                time.sleep(0.5)

        # Every id answered 503 during the cut is retried: 201 each, one effect each; the
        # in-flight id may be held by its cut-off claim until the server ends it (4 s).
        ids = [f"p1-{n}" for n in range(THREADS)] + [f"p2-{n}" for n in range(THREADS)]

        def retry_until_stored(message_id: str) -> int:
            for _ in range(60):
                response, _ = rig.post(message_id)
                if response.status_code in (200, 201):
                    return response.status_code
                assert response.status_code == 503, response.text
                time.sleep(float(response.headers.get("Retry-After", "1")))
            raise AssertionError(f"{message_id} never stored after the heal")

        statuses = list(pool.map(retry_until_stored, ids + ["inflight"]))
        assert set(statuses) == {200}
        # No worker thread is stuck for good: THREADS concurrent requests all pass.
        after = list(pool.map(lambda n: rig.post(f"after-{n}", linger=0.5)[0], range(THREADS)))
        assert [r.status_code for r in after] == [200] * THREADS

    effects = rig.effects()
    expected = ids + ["inflight"] + [f"warm-{n}" for n in range(THREADS)] + \
        [f"after-{n}" for n in range(THREADS)]
    assert effects == {message_id: 1 for message_id in expected}
    print(f"\nsilent partition: {len(partition_answers)} requests during the cut, all 503; "
          f"time to answer min {min(took):.1f} s, max {max(took):.1f} s "
          f"(first wave max {max(t for _, t in first):.1f} s, new-connection wave max "
          f"{max(t for _, t in second):.1f} s, in-flight {lingering_took:.1f} s); cut lasted "
          f"{healed_at - cut_at:.1f} s; recovered {recovered_after:.2f} s after the heal; "
          f"defaults {POSTGRESQL_CONNECT_DEFAULTS}")
