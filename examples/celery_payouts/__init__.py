"""A payout worker: Celery tasks that deposit into the escrow example's ledger, exactly once.

``tasks.pay_out`` is a :func:`chttp_client.celery.resumable_task`: one certified
``POST /accounts/<payee>/deposit`` per payout, journaled under the Celery task id. Kill
the worker while payouts run, start another, and every payout is still deposited
exactly once — the redelivered task resends the recorded message id and the ledger
(:mod:`chttp_examples.escrow.ledger`, which deduplicates nothing itself) answers from its
store.

Run it against a Redis, a ledger and a journal::

    $ export PAYOUTS_REDIS=redis://127.0.0.1:6379 PAYOUTS_JOURNAL=sqlite:///payouts.db
    $ celery -A chttp_examples.celery_payouts.tasks worker --pool prefork --loglevel INFO
    $ python -m chttp_examples.celery_payouts --ledger http://127.0.0.1:8081 --payouts 20
"""
