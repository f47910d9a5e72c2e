"""The payout worker's Celery app and its one task (configured from the environment).

``PAYOUTS_REDIS`` (broker on ``/0``, results on ``/1``) and ``PAYOUTS_JOURNAL`` (the
journal every worker shares: PostgreSQL in production; a SQLite file on one host).
The broker options follow docs/celery.rst: redelivery of a dead worker's task after
``visibility_timeout``, and a short ``unacked_mutex_expire``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from celery import Celery

from chttp_client import Journal
from chttp_client.celery import resumable_task

REDIS = os.environ.get("PAYOUTS_REDIS", "redis://127.0.0.1:6379")

app = Celery("payouts", broker=f"{REDIS}/0", backend=f"{REDIS}/1")
app.conf.update(
    broker_transport_options={
        "visibility_timeout": int(os.environ.get("PAYOUTS_VISIBILITY_TIMEOUT", "300")),
        "unacked_restore_interval": 1, "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 10,
    },
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)

journal = Journal(os.environ.get("PAYOUTS_JOURNAL", "sqlite:///payouts.db"),
                  lease=timedelta(seconds=30))


@resumable_task(app, journal, name="payouts.pay_out", send_deadline=timedelta(seconds=20))
def pay_out(ledger_url: str, payout_id: str, payee: str, amount: int, *, chttp_context: Any) -> int:
    """Deposit ``amount`` into ``payee``'s account; return the balance the ledger reported."""
    response = chttp_context.post(f"{ledger_url}/accounts/{payee}/deposit",
                                  json={"transfer": payout_id, "amount": amount})
    response.raise_for_status()
    return int(response.json()["balance"])
