"""The journal's database down while a task is delivered: the task is retried through
Celery (never failed and acknowledged with its oplog open), and once the database is
back it runs to the end, its send made once."""

from __future__ import annotations

import pytest

from chttp_client import Journal
from chttp_server.testing import PostgresCluster
from tests.celery_tasks.live import Worker, wait_until

pytestmark = pytest.mark.slow


def test_a_task_is_retried_while_the_journal_is_down(env, tmp_path):
    cluster = PostgresCluster(settings={"fsync": "off"})
    cluster.start()
    try:
        journal_url = cluster.create_database("outage_journal")
        with Journal(journal_url) as journal:
            journal.ensure_schema()
        worker = Worker("outage", env.log_dir, concurrency=1, env={"CHTTP_TEST_JOURNAL": journal_url})
        env.workers.append(worker)
        worker.wait_ready()
        cluster.stop()

        result = env.tasks.pay_flaky_auto.apply_async((701,))
        wait_until(lambda: worker.log.read_bytes().count(f"{result.id}] retry".encode()) >= 2,
                   what="retries while the journal is down")
        assert not result.ready()
        cluster.start()

        assert result.get(timeout=60) == 201
        with Journal(journal_url) as journal:
            info = journal.get(result.id)
        (step,) = info.steps
        assert info.state == "done"
        assert env.runs_by_body()['{"amount": 701}'] == [step.message_id]
    finally:
        cluster.destroy()
