"""The Celery app the worker processes of these tests run (and the tests send with).

Configured from the environment the tests set before starting workers (and before
importing this module themselves): ``CHTTP_TEST_BROKER`` (redis URL), ``CHTTP_TEST_JOURNAL``
(the shared journal, PostgreSQL), ``CHTTP_TEST_RECEIVER`` (the receiver's base URL).
Redelivery settings are the ones measured in DESIGN.md, shortened: a SIGKILLed worker's
task is back within a few seconds.
"""

from __future__ import annotations

import os
from datetime import timedelta

from celery import Celery, chain

from chttp_client import Journal, RetryPolicy
from chttp_client.celery import resumable_task
from chttp_client.errors import RunDeadlineExceeded as _RunDeadline

BROKER = os.environ.get("CHTTP_TEST_BROKER", "redis://127.0.0.1:1/0")
RECEIVER = os.environ.get("CHTTP_TEST_RECEIVER", "http://127.0.0.1:1")

app = Celery("chttp_celery_tests", broker=BROKER, backend=BROKER[:-1] + "1")
app.conf.update(
    # unacked_mutex_expire: a worker SIGKILLed while it sweeps unacknowledged messages
    # leaves kombu's sweep mutex held for this long (default 300 s: no redelivery at all
    # meanwhile, seen here when a random kill landed inside a sweep).
    broker_transport_options={"visibility_timeout": 3, "unacked_restore_interval": 1,
                              "unacked_restore_throttle": 1, "unacked_mutex_expire": 5},
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    task_serializer="json", result_serializer="json", accept_content=["json"],
    worker_hijack_root_logger=False,
)

journal = Journal(os.environ.get("CHTTP_TEST_JOURNAL", "sqlite:///unused-test-journal.db"),
                  lease=timedelta(seconds=20),
                  retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.3, timeout=10))


@resumable_task(app, journal)
def pay(amount, path="/escrow", *, chttp_context):
    """One certified POST; returns what the receiver's handler drew."""
    response = chttp_context.post(RECEIVER + path, json={"amount": amount})
    return response.json()["random number"]


@resumable_task(app, journal, bind=True, send_deadline=timedelta(seconds=0.4))
def pay_flaky(self, amount, *, chttp_context):
    """POST to /flaky (503 until enough attempts got through); retry the task meanwhile."""
    try:
        response = chttp_context.post(RECEIVER + "/flaky", json={"amount": amount})
    except _RunDeadline as unanswered:
        raise self.retry(countdown=0.2, exc=unanswered)
    return {"status": response.status_code, "retries": self.request.retries}


@resumable_task(app, journal, default_retry_delay=0.2, send_deadline=timedelta(seconds=0.4))
def pay_flaky_auto(amount, *, chttp_context):
    """As pay_flaky, but leaving the unanswered send's retry to the integration."""
    return chttp_context.post(RECEIVER + "/flaky", json={"amount": amount}).status_code


@resumable_task(app, journal)
def forward(number, *, chttp_context):
    """The chain's second link: sends on what the first received."""
    response = chttp_context.post(RECEIVER + "/escrow", json={"forwarded": number})
    return response.json()["random number"]


def pay_then_forward(amount: int, first_id: str, second_id: str):
    """The two-link chain, with its task ids fixed so that it can be published again."""
    return chain(pay.s(amount).set(task_id=first_id), forward.s().set(task_id=second_id))


@resumable_task(app, journal, busy_wait=timedelta(seconds=0.5))
def pay_impatient(amount, path="/escrow", *, chttp_context):
    """As pay, but a duplicate delivery waits only 0.5 s before it is requeued."""
    response = chttp_context.post(RECEIVER + path, json={"amount": amount})
    return response.json()["random number"]


#: The same journal database; a crash loop is given up after 1 redelivery without progress.
impatient_journal = Journal(os.environ.get("CHTTP_TEST_JOURNAL", "sqlite:///unused-test-journal.db"),
                            lease=timedelta(seconds=20), max_resume_attempts=1)


@resumable_task(app, impatient_journal)
def pay_and_crash(amount, *, chttp_context):
    """Sends, then kills its own pool child before the result is recorded: a crash loop."""
    chttp_context.post(RECEIVER + "/escrow", json={"amount": amount})
    os.kill(os.getpid(), 9)
