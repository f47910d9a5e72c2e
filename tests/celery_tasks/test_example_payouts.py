"""examples/celery_payouts: its worker SIGKILLed while payouts run, a new one started —
every payout deposited exactly once into the escrow example's ledger (which
deduplicates nothing itself), every task answered."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, select

from chttp_examples.escrow.ledger import accounts, init_ledger, make_app, operations
from tests.celery_tasks.live import RedisServer, Worker, wait_until
from tests.server.live import REPO_ROOT, serve_in_thread

pytestmark = pytest.mark.slow


def slowly(app):
    """The ledger, a fifth of a second per request: the kill lands while payouts run."""
    def wrapper(environ, start_response):
        time.sleep(0.2)
        return app(environ, start_response)
    return wrapper


def assert_each_paid_once(engine, payouts: int) -> None:
    """One deposit per payout in the ledger, the payees' balances their share of them."""
    with engine.connect() as connection:
        rows = connection.execute(select(operations.c.transfer, operations.c.kind)).all()
        balances = dict(connection.execute(select(accounts.c.name, accounts.c.balance)).all())
    assert sorted(rows) == sorted((f"payout-{n}", "deposit") for n in range(payouts))
    assert balances == {name: payouts // 3 for name in ("alice", "bob", "carol")}


def test_payouts_survive_a_killed_worker_exactly_once(pg_cluster, tmp_path):
    ledger_url = pg_cluster.create_database("payouts_ledger")
    init_ledger(ledger_url, {"alice": 0, "bob": 0, "carol": 0})
    ledger = make_app(ledger_url)
    redis = RedisServer(tmp_path)
    env = {"PAYOUTS_REDIS": redis.url.rsplit("/", 1)[0], "PAYOUTS_VISIBILITY_TIMEOUT": "3",
           "PAYOUTS_JOURNAL": pg_cluster.create_database("payouts_journal")}
    app = "chttp_examples.celery_payouts.tasks"
    engine = create_engine(ledger_url)
    workers = [Worker("payouts-1", tmp_path, env=env, app=app).wait_ready()]
    try:
        with serve_in_thread(slowly(ledger)) as ledger_base:
            client = subprocess.Popen(
                [sys.executable, "-m", "chttp_examples.celery_payouts", "--ledger", ledger_base,
                 "--payouts", "12", "--timeout", "120"],
                cwd=REPO_ROOT, env={**os.environ, **env},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

            def deposits() -> int:
                with engine.connect() as connection:
                    return len(connection.execute(select(operations.c.seq)).all())

            wait_until(lambda: deposits() >= 3, what="the first deposits")
            workers[0].kill()
            workers.append(Worker("payouts-2", tmp_path, env=env, app=app))
            out, err = client.communicate(timeout=180)
        assert client.returncode == 0, err
        assert len(out.splitlines()) == 12
        assert_each_paid_once(engine, 12)
    finally:
        for worker in workers:
            worker.kill()
        redis.stop()
        engine.dispose()
        ledger.engine.dispose()


def test_payouts_the_broker_lost_are_published_again_and_paid_once(pg_cluster, tmp_path):
    """kombu's Redis transport can lose a message outright (a worker killed between
    ``BRPOP`` and recording it unacknowledged: docs/celery.rst; it failed the test above
    once in CI, a payout whose result never came). The producer's remedy: publish again
    under the same task id after ``--patience``. Here every message is lost for certain
    — the queue deleted before any worker ran — and every payout is still paid once."""
    import redis as redis_client

    ledger_url = pg_cluster.create_database("payouts_lost_ledger")
    init_ledger(ledger_url, {"alice": 0, "bob": 0, "carol": 0})
    ledger = make_app(ledger_url)
    redis = RedisServer(tmp_path)
    broker = redis_client.Redis.from_url(redis.url)
    env = {"PAYOUTS_REDIS": redis.url.rsplit("/", 1)[0], "PAYOUTS_VISIBILITY_TIMEOUT": "3",
           "PAYOUTS_JOURNAL": pg_cluster.create_database("payouts_lost_journal")}
    app = "chttp_examples.celery_payouts.tasks"
    engine = create_engine(ledger_url)
    workers = []
    try:
        with serve_in_thread(ledger) as ledger_base:
            client = subprocess.Popen(
                [sys.executable, "-m", "chttp_examples.celery_payouts", "--ledger", ledger_base,
                 "--payouts", "6", "--timeout", "120", "--patience", "3"],
                cwd=REPO_ROOT, env={**os.environ, **env},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_until(lambda: broker.llen("celery") == 6, what="the six payouts published")
            assert broker.delete("celery") == 1        # the broker lost them all
            workers.append(Worker("payouts-1", tmp_path, env=env, app=app).wait_ready())
            out, err = client.communicate(timeout=180)
        assert client.returncode == 0, err
        assert len(out.splitlines()) == 6
        assert err.count("published again") >= 6, err
        assert_each_paid_once(engine, 6)
    finally:
        for worker in workers:
            worker.kill()
        broker.close()
        redis.stop()
        engine.dispose()
        ledger.engine.dispose()
