"""Certified sends and ``persist()`` from inside a receiver's handler (``req.chttp``).

A handler runs inside the receiver's transaction, which rolls back on a 5xx, an
exception or a crash; the sender then retries the *incoming* message and the handler
runs again. Whatever the handler sent out meanwhile already happened, so its outgoing
messages must be the same ones again (docs/protocol.rst §2, last paragraph; §5, last bullet):

* the handler's oplog id is derived from the incoming ``(scope, id)``, so a retry finds
  the oplog of the earlier attempt and *replays* it (same persisted values, same
  recorded answers, same ids, and a non-determinism error if the handler now asks for
  something else);
* outgoing message ids are ``chttp-<digest of (scope, id)>-<step number>``, derived, so
  even a step whose record was lost would be resent under the same id;
* the oplog lives in the journal's own transactions, never in the handler's, so it
  survives the handler's rollback. Buffered records — ``persist()`` values and the
  answers of sends — are written with the next send's intent commit (as in
  :mod:`chttp_client.context`) and, at the latest, when the handler's request ends
  (:func:`close_incoming_context`), whether it committed or rolled back. Only then are
  those answers acknowledged downstream. If that last write is lost (a crash, the
  journal unreachable), a retried incoming message resends the same derived ids and the
  downstream receivers replay their stored answers; if the handler had committed, no
  retry comes and the downstream answers merely stay unacknowledged until the
  downstream receivers' retention drops them.

Where the journal lives: ``CertifiedMiddleware(app, …, journal=Journal(url))``. With no
journal given, a PostgreSQL receiver journals in its own database (separate
connections). A SQLite receiver needs a journal on *another* file: its handler's
transaction holds the file's write lock (``BEGIN IMMEDIATE``) until it ends, so a second
connection to the same file could not commit the outgoing record before the send.

An ``async`` handler (the ASGI front end) opens the same context with
:func:`open_incoming_context_async` — the same oplog id, derived ids and replay, its
journal I/O in worker threads — and closes it with :func:`close_incoming_context_async`.

These oplogs are driven by incoming retries, not by ``resume_all()``, which skips them;
their pending acknowledgements are still retried by it. ``Journal.purge`` removes them
once the receiver's retention has passed since their last activity.

Deadlines: the handler waits for each send's answer while its transaction (row locks,
SQLite's write lock, a pooled connection) stays open, so a send does not retry for the
journal's one-day deadline here. After ``CertifiedMiddleware(handler_send_deadline=…)``
(default :data:`HANDLER_SEND_DEADLINE`, 30 s; ``None`` for no bound) the send raises
:class:`~chttp_client.errors.DeadlineExceeded` *without recording it*. A handler should
let it propagate: the middleware rolls back (the exception is a 500, the incoming key
stays free), the incoming sender retries, and the retried handler replays its oplog and
resends the same derived id, for another 30 s. The send's own deadline (the journal's
``RetryPolicy.deadline`` or ``deadline=``, counted from its first attempt) is still
final: once it passes, the error is recorded and replayed to every later retry.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import Engine

from chttp_client import codec
from chttp_client.async_context import AsyncResumableContext
from chttp_client.context import ResumableContext
from chttp_client.effects import AsyncExecutor, Blocking, Steps, SyncExecutor
from chttp_client.errors import ChttpClientError
from chttp_client.journal import Journal
from chttp_client.leases import new_owner
from chttp_client.records import INCOMING_PREFIX

__all__ = [
    "HANDLER_SEND_DEADLINE",
    "open_incoming_context",
    "close_incoming_context",
    "open_incoming_context_async",
    "close_incoming_context_async",
    "derived_message_id",
    "incoming_oplog_id",
    "journal_for_engine",
]

log = logging.getLogger("chttp_client")

#: The default bound on one handler run's wait for a send (see "Deadlines" above).
HANDLER_SEND_DEADLINE = timedelta(seconds=30)

_JOURNALS: weakref.WeakKeyDictionary[Engine, Journal] = weakref.WeakKeyDictionary()
_JOURNALS_LOCK = threading.Lock()


def _message_digest(*parts: str) -> str:
    """A short, stable digest of ``parts`` (length-prefixed, so no two tuples collide)."""
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()


def incoming_oplog_id(scope: str, message_id: str) -> str:
    return "in-" + _message_digest("chttp-incoming", scope, message_id)[:48]


def derived_message_id(scope: str, message_id: str, step: int) -> str:
    """The id of outgoing step ``step`` of the handler of incoming ``(scope, message_id)``."""
    return f"chttp-{_message_digest('chttp-outgoing', scope, message_id)[:32]}-{step}"


def journal_for_engine(engine: Engine) -> Journal:
    """The default journal of a PostgreSQL receiver: its own database, shared per engine."""
    if engine.dialect.name == "sqlite":
        raise ChttpClientError(
            "a handler's certified sends need a journal outside the SQLite message store "
            "(its file is locked by the handler's transaction): pass "
            "CertifiedMiddleware(..., journal=Journal('sqlite:///outgoing.db'))"
        )
    with _JOURNALS_LOCK:
        journal = _JOURNALS.get(engine)
        if journal is None:
            journal = _JOURNALS[engine] = Journal(engine=engine, upgrade_schema=False)
        return journal


def open_incoming_context(
    journal: Journal,
    *,
    scope: str,
    message_id: str,
    # How long one handler run waits for a send's answer (None: the send's deadline).
    send_deadline: timedelta | None = HANDLER_SEND_DEADLINE,
) -> ResumableContext:
    """The resumable context of one handler run for incoming ``(scope, message_id)``.

    One layer for a front end: the returned context has ``persist``/``send``/
    ``checkpoint``; end the run with :func:`close_incoming_context`. A retry of the
    message finds the oplog of the earlier attempt and replays it.
    """
    options = SyncExecutor(journal.http_client, journal.sleep).run(
        _incoming_options(journal, scope, message_id, send_deadline))
    return ResumableContext(journal.services, **options)


async def open_incoming_context_async(
    journal: Journal,
    *,
    scope: str,
    message_id: str,
    # The async client of the handler's loop (``async with journal.async_clients.client()``).
    client: httpx.AsyncClient,
    send_deadline: timedelta | None = HANDLER_SEND_DEADLINE,
) -> AsyncResumableContext:
    """:func:`open_incoming_context` for an ``async`` handler (an ASGI front end): the same
    oplog, ids and replay, its journal I/O in worker threads; end the run with
    :func:`close_incoming_context_async`."""
    options = await AsyncExecutor(None, journal.async_sleep).run(
        _incoming_options(journal, scope, message_id, send_deadline))
    return AsyncResumableContext(journal.services, client=client, sleep=journal.async_sleep, **options)


def _incoming_options(journal: Journal, scope: str, message_id: str,
                      send_deadline: timedelta | None) -> Steps[dict[str, Any]]:
    """What a handler run's context is made of, whichever kind of handler it is."""
    yield Blocking(journal.ensure_schema)
    oplog_id = incoming_oplog_id(scope, message_id)
    info = yield Blocking(journal.store.get, (oplog_id,))
    if info is not None:
        # The receiver's claim on (scope, id) already makes this handler run the only
        # one for this message, so the earlier attempt's lease is taken over.
        owner = yield Blocking(journal.take_lease, (oplog_id,), {"force": True})
    else:
        owner = new_owner()
    return dict(
        oplog_id=oplog_id,
        function=INCOMING_PREFIX,
        version=1,
        arguments=codec.dumps({"args": [], "kwargs": {"scope": scope, "message_id": message_id}}),
        recorded=info.steps if info is not None else (),
        stored=info is not None,
        owner=owner,
        message_id_for=lambda step: derived_message_id(scope, message_id, step),
        run_deadline=send_deadline,
    )


def close_incoming_context(context: ResumableContext) -> None:
    """Write buffered records (the request is over, committed or not).

    Best effort: persist records buffered since the last send were seen by nothing
    outside this process, and a buffered answer is replayed by the downstream receiver
    to the same derived id, so losing them (journal unreachable) is harmless; it must
    not turn an answer the receiver already committed into an error.
    """
    try:
        context.flush()
    except Exception:  # noqa: BLE001
        log.warning("chttp: could not journal a handler's last persist() records", exc_info=True)


async def close_incoming_context_async(context: AsyncResumableContext) -> None:
    """:func:`close_incoming_context` for an ``async`` handler (best effort too)."""
    try:
        await context.flush()
    except Exception:  # noqa: BLE001
        log.warning("chttp: could not journal a handler's last persist() records", exc_info=True)
