"""Fixtures of the Celery tests: one Redis, one journal, one receiver per session.

Everything is real: ``redis-server`` on a free loopback port, PostgreSQL databases of
the session's throwaway cluster for the journal and for the receiver, the receiver
served by waitress on loopback, and prefork ``celery worker`` processes
(:mod:`tests.celery_tasks.live`). No eager mode: exactly-once is only worth testing
across real redelivery.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import random
import time
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterator

import pytest
from chttp_client import Journal
from tests.celery_tasks.live import RedisServer, Worker, redis_server_binary
from tests.client.receiver import Front, make_receiver
from tests.server.live import serve_in_thread

if redis_server_binary() is None:  # pragma: no cover - .ci/run installs it
    pytest.skip("redis-server is not installed (.ci/run installs it)", allow_module_level=True)


class Gate:
    """WSGI in front of the receiver: logs every attempt; holds the first one on ``/held``.

    ``/slow`` is ``/escrow`` after up to 0.15 s, so that random kills find sends in flight.

    ``/held`` is served as ``/escrow`` once :attr:`release` is set, so a test can kill
    the worker whose certified send is in flight (arrived, not yet answered).
    """

    def __init__(self, front: Front) -> None:
        self.front = front
        self.arrived = threading.Event()
        self.release = threading.Event()
        #: (path, X-Message-ID, body) of every attempt, in arrival order.
        self.attempts: list[tuple[str, str, bytes]] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.arrived, self.release = threading.Event(), threading.Event()
        with self._lock:
            self.attempts = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
            with self._lock:
                self.attempts.append((path, environ.get("HTTP_X_MESSAGE_ID", ""), body))
            if path == "/slow":        # long enough for kills to land mid-send
                time.sleep(random.uniform(0.0, 0.15))
                environ["PATH_INFO"] = "/escrow"
            if path == "/held":
                first = not self.arrived.is_set()
                self.arrived.set()
                if first:
                    self.release.wait(60)
                environ["PATH_INFO"] = "/escrow"
        return self.front(environ, start_response)


@dataclass
class CeleryEnv:
    tasks: ModuleType
    journal: Journal
    gate: Gate
    front: Front
    receiver_url: str
    log_dir: Any
    workers: list[Worker] = field(default_factory=list)

    def worker(self, name: str, *, concurrency: int = 2, ready: bool = True) -> Worker:
        worker = Worker(name, self.log_dir, concurrency=concurrency)
        self.workers.append(worker)
        return worker.wait_ready() if ready else worker

    def start(self, *names: str, concurrency: int = 2) -> list[Worker]:
        """Start workers side by side, then wait until each is ready (boots overlap)."""
        started = [self.worker(name, concurrency=concurrency, ready=False) for name in names]
        return [worker.wait_ready() for worker in started]

    def runs_by_body(self) -> dict[str, list[str]]:
        """Receiver handler runs that committed: body → message ids."""
        from tests.client.receiver import runs
        seen: dict[str, list[str]] = {}
        for message_id, _path, body in runs(self.front.engine):
            seen.setdefault(json.dumps(json.loads(body), sort_keys=True), []).append(message_id)
        return seen


@pytest.fixture(scope="session")
def celery_env(pg_cluster, tmp_path_factory) -> Iterator[CeleryEnv]:
    base = tmp_path_factory.mktemp("celery")
    redis = RedisServer(base)
    journal_url = pg_cluster.create_database("celery_journal")
    front = make_receiver(pg_cluster.create_database("celery_receiver"))
    gate = Gate(front)
    saved = dict(os.environ)
    try:
        with serve_in_thread(gate, threads=16) as receiver_url:
            os.environ.update(CHTTP_TEST_BROKER=redis.url, CHTTP_TEST_JOURNAL=journal_url,
                              CHTTP_TEST_RECEIVER=receiver_url)
            tasks = importlib.import_module("tests.celery_tasks.tasks")
            env = CeleryEnv(tasks, tasks.journal, gate, front, receiver_url, base)
            try:
                yield env
            finally:
                for worker in env.workers:
                    worker.kill()
                tasks.journal.close()
                tasks.impatient_journal.close()
                tasks.app.close()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        front.engine.dispose()
        redis.stop()


@pytest.fixture(scope="module")
def steady_worker(celery_env: CeleryEnv) -> Iterator[Worker]:
    """One worker for a module's tests that kill nothing (booting one costs seconds)."""
    worker = Worker("steady", celery_env.log_dir, concurrency=2).wait_ready()
    yield worker
    worker.kill()


@pytest.fixture
def env(celery_env: CeleryEnv) -> Iterator[CeleryEnv]:
    """The session's environment, with this test's workers killed at its end."""
    celery_env.gate.reset()
    celery_env.front.failures = 0
    yield celery_env
    for worker in celery_env.workers:
        worker.kill()
    celery_env.workers.clear()
