"""Certified HTTP, the sending half: resumable functions and certified sends.

::

    from chttp_client import resumable, Journal

    journal = Journal("sqlite:///client.db")          # or a PostgreSQL URL

    @resumable(journal)
    def start_transferring_foo(escrow_url, amount, *, chttp_context):
        local = chttp_context.persist(secrets.randbelow, 10**6)   # recorded once
        response = chttp_context.post(escrow_url, json={"amount": amount})
        return local + response.json()["random number"]

    start_transferring_foo("http://…/escrow", 5)      # runs to completion, or raises
    journal.resume_all()                              # at start-up: finish what a crash cut off

    @resumable(journal)                               # async def: the same steps, awaited
    async def transfer(escrow_url, amount, *, chttp_context):
        local = await chttp_context.persist(secrets.randbelow, 10**6)
        response = await chttp_context.post(escrow_url, json={"amount": amount})
        return local + response.json()["random number"]

    asyncio.run(transfer("http://…/escrow", 5))       # or await it; await journal.resume_all_async()

The wire definitions both halves share live in :mod:`chttp_core.wire`; the
crash-every-step test helper is :func:`chttp_client.testing.check_crash_resume`.
This package imports neither WebOb nor :mod:`chttp_server`.

The parts, bottom up: :mod:`~chttp_client.codec` and :mod:`~chttp_client.records`
(what is recorded), :mod:`~chttp_client.leases` and :mod:`~chttp_client.oplog_store`
(all SQL), :mod:`~chttp_client.sending` and :mod:`~chttp_client.recorded_sends` (one
send on the wire, as a record), :mod:`~chttp_client.acknowledger` (background DELETEs),
:mod:`~chttp_client.heartbeat` (leases kept alive for a whole run),
:mod:`~chttp_client.lease_timing` (the lease, a few heartbeats), :mod:`~chttp_client.observers`
(events and scripted steps, for tools and tests), :mod:`~chttp_client.effects` and
:mod:`~chttp_client.steps` (the step logic of a run, once for ``def`` and ``async def``),
:mod:`~chttp_client.context` and :mod:`~chttp_client.async_context` (the two faces of
it a function sees), :mod:`~chttp_client.registry`, :mod:`~chttp_client.loop_clients`,
:mod:`~chttp_client.runs` and :mod:`~chttp_client.journal` (the front), :mod:`~chttp_client.resumable` (the decorator) and :mod:`~chttp_client.incoming`
(a receiver's handler as a sender).
"""

from __future__ import annotations

from chttp_client.async_context import AsyncResumableContext
from chttp_client.codec import RecordedError
from chttp_client.context import ResumableContext
from chttp_client.errors import (
    ChttpClientError,
    ConcurrentStepsError,
    DeadlineExceeded,
    JournalError,
    JournalUnavailable,
    MessageGoneError,
    MessageIdReusedError,
    MessageRejectedError,
    MessageTooOldError,
    NonDeterminismError,
    OplogAbandonedError,
    OplogBusyError,
    OplogTakenOverError,
    ProtocolAnswerError,
    ResponseTooLargeError,
    SendError,
    UnhealableSendError,
    UnknownFunctionError,
    UnknownOplogError,
)
from chttp_client.journal import Journal, ResumeOutcome
from chttp_client.observers import StepEvent
from chttp_client.records import OplogInfo, StepRecord
from chttp_client.resumable import resumable
from chttp_client.sending import RetryPolicy

__all__ = [
    "resumable",
    "Journal",
    "RetryPolicy",
    "ResumableContext",
    "AsyncResumableContext",
    "StepEvent",
    "StepRecord",
    "OplogInfo",
    "ResumeOutcome",
    "RecordedError",
    "ChttpClientError",
    "JournalError",
    "NonDeterminismError",
    "ConcurrentStepsError",
    "UnknownFunctionError",
    "UnknownOplogError",
    "OplogBusyError",
    "OplogTakenOverError",
    "OplogAbandonedError",
    "JournalUnavailable",
    "SendError",
    "DeadlineExceeded",
    "UnhealableSendError",
    "ProtocolAnswerError",
    "MessageRejectedError",
    "MessageGoneError",
    "MessageTooOldError",
    "MessageIdReusedError",
    "ResponseTooLargeError",
]
