"""Fixtures for the multi-host tests: the topology of :mod:`chttp_examples.multihost`.

They need root (network namespaces, iptables), ``ip``, ``iptables``, the PostgreSQL
server binaries and ``pgbouncer``; without one of them every test here is skipped and
says which is missing. Each topology is removed by its fixture's teardown, failing or
not, and the teardown checks that no namespace or link of it is left.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from chttp_examples.multihost.database import PgBouncerNotFound, find_pgbouncer
from chttp_examples.multihost.haproxy import HAProxyNotFound, find_haproxy
from chttp_examples.multihost.netns import NetworkUnavailable, leftovers, require_network
from chttp_examples.multihost.patroni import PatroniNotFound, find_patroni
from chttp_examples.multihost.patroni_faults import DRIVERS, PatroniTopology
from chttp_examples.multihost.topology import Topology

from chttp_server.testing import PostgresNotFound, find_postgres_bin


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "scale: the million-message size run (~40 s); in the default run, "
        "-m scale selects it alone")


def _missing() -> str | None:
    try:
        require_network()
        find_pgbouncer()
        find_postgres_bin()
    except (NetworkUnavailable, PgBouncerNotFound, PostgresNotFound) as error:
        return str(error)
    return None


@pytest.fixture(scope="session")
def multihost_ready() -> None:
    reason = _missing()
    if reason is not None:
        pytest.skip(f"multi-host topology unavailable: {reason}")


def _built(tmp_path_factory: pytest.TempPathFactory, name: str, *, via: str,
           synchronous: bool = True) -> Iterator[Topology]:
    topology = Topology(tmp_path_factory.mktemp(name), via=via, synchronous=synchronous)
    tag = topology.network.tag
    try:
        yield topology
    finally:
        topology.close()
        spaces, links = leftovers()
        assert not [n for n in spaces + links if n.startswith(tag)], "topology left things behind"


@pytest.fixture(scope="module")
def bouncer_topology(multihost_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """Three receivers reaching the synchronous primary through PgBouncer (transaction mode).

    One per test module: the tests of a module leave it as they found it (a killed
    receiver is restarted, a cut restored, PgBouncer started again) and use message ids
    of their own; a fresh one per module keeps one module's faults from another's.
    """
    yield from _built(tmp_path_factory, "bouncer", via="pgbouncer")


@pytest.fixture
def failover_topology(multihost_ready: None, tmp_path_factory: pytest.TempPathFactory,
                      request: pytest.FixtureRequest) -> Iterator[Topology]:
    """Receivers on the libpq multi-host URL; ``synchronous`` from ``request.param`` (default on)."""
    synchronous = getattr(request, "param", True)
    yield from _built(tmp_path_factory, "failover", via="multihost", synchronous=synchronous)


def _patroni(tmp_path_factory: pytest.TempPathFactory, name: str, *,
             synchronous: bool, via: str = "multihost",
             drivers: tuple[str, ...] = DRIVERS) -> Iterator[PatroniTopology]:
    try:
        find_patroni()
    except PatroniNotFound as error:
        pytest.skip(f"Patroni cluster unavailable: {error}")
    topology = PatroniTopology(tmp_path_factory.mktemp(name), synchronous=synchronous, via=via,
                               drivers=drivers)
    tag = topology.network.tag
    try:
        yield topology
    finally:
        topology.close()
        spaces, links = leftovers()
        assert not [n for n in spaces + links if n.startswith(tag)], "topology left things behind"


@pytest.fixture(scope="module")
def patroni_topology(multihost_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PatroniTopology]:
    """Receivers on a Patroni cluster (3 nodes, 3-member etcd, synchronous_mode), one per module.

    Skipped, saying why, only when Debian's ``patroni`` or ``etcd-server`` is missing
    (``.ci/run`` installs both). Each test leaves the cluster healthy (one leader, a
    synchronous standby, a replica), which the next one waits for before its fault.
    """
    yield from _patroni(tmp_path_factory, "patroni", synchronous=True)


@pytest.fixture
def patroni_async_topology(multihost_ready: None,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[PatroniTopology]:
    """The same cluster with ``synchronous_mode: false`` (the expected-failure demonstration)."""
    yield from _patroni(tmp_path_factory, "patroni-async", synchronous=False)


@pytest.fixture(scope="module")
def patroni_haproxy_topology(multihost_ready: None,
                             tmp_path_factory: pytest.TempPathFactory) -> Iterator[PatroniTopology]:
    """The Patroni cluster with the receivers behind HAProxy (``GET /primary`` health check).

    Skipped, saying why, when ``haproxy`` is missing too (``.ci/run`` installs it).
    """
    try:
        find_haproxy()
    except HAProxyNotFound as error:
        pytest.skip(f"HAProxy unavailable: {error}")
    yield from _patroni(tmp_path_factory, "patroni-haproxy", synchronous=True, via="haproxy")


@pytest.fixture(scope="module")
def patroni_asgi_topology(multihost_ready: None,
                          tmp_path_factory: pytest.TempPathFactory) -> Iterator[PatroniTopology]:
    """The Patroni cluster with ASGI receivers (CertifiedMiddleware for ASGI) on asyncpg,
    through asyncpg's multi-host URL with ``target_session_attrs=read-write``."""
    yield from _patroni(tmp_path_factory, "patroni-asgi", synchronous=True, drivers=("asyncpg",))
