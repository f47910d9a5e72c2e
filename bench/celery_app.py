"""The bench's Celery app: one task making one POST, plain (httpx) and resumable.

Configured from the environment by :mod:`bench.celery_run` before the worker starts:
``BENCH_CELERY_BROKER`` (redis, results on db 1), ``BENCH_CELERY_JOURNAL`` (PostgreSQL)
and ``BENCH_CELERY_RECEIVER`` (the certified bench server's ``/items``). Both tasks
send to the same receiver with an ``X-Message-ID``: the plain one draws a fresh id per
call, as a hand-rolled idempotency key would, so the receiver does the same work for
both and the ratio is the integration's own cost.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
from celery import Celery

from chttp_client import Journal
from chttp_client.celery import resumable_task

BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:1/0")
RECEIVER = os.environ.get("BENCH_CELERY_RECEIVER", "http://127.0.0.1:1/items")

app = Celery("chttp_bench", broker=BROKER, backend=BROKER[:-1] + "1")
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                task_acks_late=True, task_reject_on_worker_lost=True)

journal = Journal(os.environ.get("BENCH_CELERY_JOURNAL", "sqlite:///unused-bench-journal.db"),
                  # BENCH_CELERY_ACKNOWLEDGE=0: without the background DELETEs (their share).
                  acknowledge=os.environ.get("BENCH_CELERY_ACKNOWLEDGE", "1") != "0")
_client = httpx.Client(timeout=30)


@app.task(name="bench.plain_post")
def plain_post(amount: int) -> int:
    response = _client.post(RECEIVER, json={"amount": amount},
                            headers={"X-Message-ID": str(uuid.uuid4())})
    return response.status_code


@resumable_task(app, journal, name="bench.resumable_post")
def resumable_post(amount: int, *, chttp_context: Any) -> int:
    return int(chttp_context.post(RECEIVER, json={"amount": amount}).status_code)
