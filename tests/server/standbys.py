"""A PostgreSQL server that requires a synchronous standby which never connects.

With ``synchronous_standby_names`` naming a standby that never comes, every commit that
waits for the standbys waits until the setting is cleared: so a test sees a read held
for them (tests/server/test_replay_waits_for_standbys.py says why replays must be).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import text

from chttp_core.db import make_engine
from chttp_server.testing import PostgresCluster

__all__ = ["cluster", "held_until_the_standbys_answer"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """A server of this module's own: the tests change its ``synchronous_standby_names``."""
    server = PostgresCluster(settings={"fsync": "off", "full_page_writes": "off"})
    server.start()
    yield server
    server.destroy()


def _standbys(cluster: PostgresCluster, names: str) -> None:
    """Set ``synchronous_standby_names`` server-wide and wait until sessions see it."""
    admin = make_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'"))
            connection.execute(text("SELECT pg_reload_conf()"))
        deadline = time.monotonic() + 30
        while True:
            with admin.connect() as connection:
                seen = connection.execute(text("SHOW synchronous_standby_names")).scalar_one()
            if seen == names:
                return
            assert time.monotonic() < deadline, "the reload was never seen"
            time.sleep(0.02)
    finally:
        admin.dispose()


def _waiting_for_standbys(cluster: PostgresCluster) -> int:
    admin = make_engine(cluster.url())
    try:
        with admin.connect() as connection:
            return int(connection.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")).scalar_one())
    finally:
        admin.dispose()


def held_until_the_standbys_answer(cluster: PostgresCluster, read: Callable[[], Any]) -> Any:
    """Run ``read`` while a standby that never connects is required: it must wait for it
    (seen in pg_stat_activity, still unanswered), and finish once the requirement goes."""
    _standbys(cluster, "nobody")
    answer: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: answer.setdefault("value", read()), daemon=True)
    try:
        reader.start()
        deadline = time.monotonic() + 30
        while _waiting_for_standbys(cluster) == 0:
            assert reader.is_alive(), f"answered without waiting for the standbys: {answer}"
            assert time.monotonic() < deadline, "the read never waited for the standbys"
            time.sleep(0.02)
        time.sleep(0.2)
        assert reader.is_alive() and "value" not in answer  # held, not answered
    finally:
        _standbys(cluster, "")
    reader.join(30)
    assert not reader.is_alive()
    return answer["value"]
