"""The ASGI front end on the Patroni cluster: asyncpg's multi-host URL finds the leader.

Three receivers run :class:`chttp_server.asgi.CertifiedMiddleware` over an
``AsyncEngine`` on ``postgresql+asyncpg://…?host=…&host=…&host=…&target_session_attrs=read-write``
(:mod:`chttp_examples.multihost.asgi_receiver`): SQLAlchemy's asyncpg dialect passes the
hosts and ports as lists, and asyncpg picks the node that accepts writes. The leader's
PostgreSQL is SIGKILLed, then a switchover moves the leader, under load; the history is checked as in
tests/multihost/test_patroni.py: 0 lost, 0 duplicated.
"""

from __future__ import annotations

import asyncio

import pytest
from chttp_examples.multihost import patroni_faults
from chttp_examples.multihost.patroni_faults import PatroniTopology
from tests.multihost.test_patroni import _assert_held

from chttp_server.asgi import make_async_engine

pytestmark = pytest.mark.slow


def test_asyncpg_multihost_url_lands_on_the_leader(patroni_asgi_topology: PatroniTopology):
    topo = patroni_asgi_topology
    assert topo.cluster is not None
    url = topo.store_url_for(0)
    assert url.startswith("postgresql+asyncpg://") and url.count("host=") == 3
    assert topo.receiver_module(0) == "asgi_receiver"
    from sqlalchemy import text

    async def where() -> tuple[str, bool]:
        engine = make_async_engine(url)
        try:
            async with engine.connect() as connection:
                row = (await connection.execute(
                    text("SELECT host(inet_server_addr()), pg_is_in_recovery()"))).one()
                return str(row[0]), bool(row[1])
        finally:
            await engine.dispose()
    assert asyncio.run(where()) == (topo.cluster.leader().host.address, False)


def test_asgi_receivers_leader_postgres_sigkilled(patroni_asgi_topology: PatroniTopology):
    outcome = patroni_faults.leader_postgres_killed(patroni_asgi_topology)
    _assert_held(outcome)
    report = outcome.report
    assert report.replay_mismatch == [] and report.stored_mismatch == [], report.summary()
    assert report.unresolved == [] and report.orphans == [], report.summary()


def test_asgi_receivers_switchover(patroni_asgi_topology: PatroniTopology):
    """The leader moves: asyncpg must skip the demoted node (now read-only) on reconnect."""
    outcome = patroni_faults.switchover(patroni_asgi_topology)
    _assert_held(outcome)
    assert outcome.extra["leader after"] != outcome.extra["leader before"]
    assert outcome.report.replay_mismatch == [] and outcome.report.stored_mismatch == []
