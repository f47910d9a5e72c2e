"""The Django middleware's own replay waits for the synchronous standbys on PostgreSQL.

A replay answers from a row it read; PostgreSQL shows a commit on the primary once its
wait for the synchronous standbys *ends*, which a terminated backend ends too, so an
answer read before the standbys hold the row could be lost by a failover
(tests/server/test_replay_waits_for_standbys.py). Django joins the message's transaction
(the front end commits), so the replay's WAL record must be written before Django's
COMMIT (``MessageStore.hold_until_replicated``): tests/server checks that joined path
through ``MessageTransaction`` directly; here it is the Django order service itself, in
a process of its own (tests/examples/django_live.py), on a server whose required
standby never connects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import pytest

from chttp_server.testing import PostgresCluster
from tests.examples.django_live import DjangoServer, django_env, manage, runs, scalar
from tests.server.standbys import cluster, held_until_the_standbys_answer  # noqa: F401 - cluster: a fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(cluster: PostgresCluster, tmp_path_factory) -> Iterator[tuple[str, str, Path]]:
    test_dir = tmp_path_factory.mktemp("django-standbys")
    db_url = cluster.create_database("django_standbys")
    env = django_env(db_url, test_dir)
    manage(env, "migrate")
    with DjangoServer(env) as server:
        yield server.url, db_url, test_dir


def test_the_django_replay_and_get_of_the_message_url_wait_for_the_standbys(cluster, project):
    base, db_url, test_dir = project
    headers = {"X-Message-ID": "held-django-1"}
    with httpx.Client(timeout=60) as client:
        first = client.post(f"{base}/orders/counted", content=b"{}", headers=headers)
        assert first.status_code == 201, first.text
        replay = held_until_the_standbys_answer(
            cluster, lambda: client.post(f"{base}/orders/counted", content=b"{}", headers=headers))
        assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
        assert replay.content == first.content
        assert runs(test_dir) == ["counted held-django-1"]        # the view ran once
        assert scalar(db_url, "SELECT count(*) FROM orders_order WHERE item = 'counted'") == 1

        url = first.headers["X-Message-URL"]                       # GET: the same rule
        fetched = held_until_the_standbys_answer(cluster, lambda: client.get(httpx.URL(base).join(url)))
        assert fetched.status_code == 201 and fetched.content == first.content
