"""``Journal``: where resumable functions record their oplogs, and how they are resumed.

A journal is a database (SQLite file by default, or PostgreSQL) holding the tables of
:mod:`chttp_core.schema`, plus the HTTP client the certified sends use. Creating one is
cheap; the schema is brought to this code's head lazily, on first use, through the
project's one Alembic lineage (:func:`chttp_core.migrate.upgrade`), so
``Journal("sqlite:///client.db")`` just works. Hosts that run migrations themselves pass
``upgrade_schema=False`` and get :class:`~chttp_core.errors.SchemaOutOfDateError`
naming the command if the schema is behind.

The journal is a thin front over parts with one job each:

* :class:`~chttp_client.oplog_store.OplogStore` — every SQL statement (oplogs, steps,
  leases, acknowledgement marks), behind plain records;
* :class:`~chttp_client.steps.RunSteps` — the step logic of one run (replay,
  determinism checks, recording, the write buffer), for ``def`` and ``async def``
  functions alike, seen through :class:`~chttp_client.context.ResumableContext` or
  :class:`~chttp_client.async_context.AsyncResumableContext`;
* :class:`~chttp_client.runs.Runs` — running and resuming (``run``/``run_async``,
  ``resume``/``resume_async``, ``resume_all``/``resume_all_async``);
* :class:`~chttp_client.acknowledger.Acknowledger` — the background DELETEs.

Functions are registered *globally* by ``(name, version)`` (:mod:`chttp_client.registry`,
re-exported here), not per journal object.

Leases (:mod:`chttp_client.leases`): a run holds its oplog's lease; every commit of the
run renews it and fails with :class:`~chttp_client.errors.OplogBusyError` if it was
taken over, so two processes never run one oplog at once. A background heartbeat renews
it every ``heartbeat`` (5 s) for the whole run (:mod:`chttp_client.heartbeat`), so the
lease is short — ``3 x heartbeat`` by default (:mod:`chttp_client.lease_timing`) — and
a worker that died on another host is taken over within seconds. A lease's deadline is
kept by the database's clock, not ``clock=`` (hosts sharing a journal need not agree on
the time); a test that needs a lease gone expires it there
(:func:`chttp_client.testing.expire_leases`).
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import logging
import threading
import time
import weakref
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

import httpx
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from chttp_client.acknowledger import Acknowledger
from chttp_client.background import Background
from chttp_client.context import RunServices
from chttp_client.effects import run_blocking
from chttp_client.errors import JournalError, OplogAbandonedError, UnknownOplogError
from chttp_client.heartbeat import Heartbeat
from chttp_client.lease_timing import DEFAULT_HEARTBEAT, lease_for
from chttp_client.leases import new_owner
from chttp_client.loop_clients import LoopClients
from chttp_client.oplog_store import OplogStore
from chttp_client.records import INCOMING_PREFIX, OplogInfo
from chttp_client.registry import register, registered_versions, unregister
from chttp_client import retention
from chttp_client.retention import RECEIVER_RETENTION
from chttp_client.runs import ResumeOutcome, Runs
from chttp_client.sending import RetryPolicy, utcnow
from chttp_core import migrate
from chttp_core.db import make_engine, normalize_url
from chttp_core.store_urls import CREATE_HINT, check_store_url
from chttp_core.schema import OPLOG_OPEN

__all__ = [
    "Journal",
    "OplogInfo",
    "ResumeOutcome",
    "register",
    "unregister",
    "registered_versions",
    "INCOMING_PREFIX",
]

log = logging.getLogger("chttp_client")


class Journal(Runs):
    """The oplog store and HTTP client of resumable functions (see the module docstring).

    ``Journal("sqlite:///client.db")``, ``Journal("postgresql://…")`` or
    ``Journal(engine=host_engine)``. All options are keyword-only.
    """

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        # An engine the host already has (then url must be None).
        engine: Engine | None = None,
        # Bring the chttp schema to head on first use (False: only check it).
        upgrade_schema: bool = True,
        # The client certified sends go through; None: one made here (closed by close()).
        http_client: httpx.Client | None = None,
        # … or just its transport (tests: httpx.WSGITransport around a receiver).
        transport: httpx.BaseTransport | None = None,
        # Retries, backoff, per-attempt timeout and per-send deadline (docs/protocol.rst §5).
        retry: RetryPolicy = RetryPolicy(),
        # How often a live run renews its oplog's lease (chttp_client.lease_timing) …
        heartbeat: timedelta = DEFAULT_HEARTBEAT,
        # … and how long the lease lasts unrenewed (database clock): how long a worker
        # dead on another host holds its oplogs. None: 3 x heartbeat; at least 2 x, or 0.
        lease: timedelta | None = None,
        # DELETE on X-Message-URL after each answer (docs/protocol.rst §3), in the background.
        acknowledge: bool = True,
        # Time and sleep; tests replace them so that nothing waits on the wall clock.
        # Lease deadlines do not use it: they are the database's (chttp_client.leases).
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        # Resumes of one oplog that make no progress (no commit: a crash loop) before
        # resume()/resume_all() abandon it instead (None: never).
        max_resume_attempts: int | None = 5,
        # The client of async def functions' sends, for use on the host's one event loop;
        # None: one per event loop, made with async_transport and closed when the loop
        # is idle or shuts down (chttp_client.loop_clients).
        async_http_client: httpx.AsyncClient | None = None,
        # … or the transport of those per-loop clients (one that may be closed and used
        # again, like httpx.ASGITransport: each per-loop client closes it).
        async_transport: httpx.AsyncBaseTransport | None = None,
        # How async def functions wait between attempts (tests: a fake that moves the clock).
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if (url is None) == (engine is None):
            raise JournalError("give exactly one of url or engine=")
        if http_client is not None and transport is not None:
            raise JournalError("give http_client= or transport=, not both")
        if async_http_client is not None and async_transport is not None:
            raise JournalError("give async_http_client= or async_transport=, not both")
        if max_resume_attempts is not None and max_resume_attempts < 1:
            raise JournalError("max_resume_attempts must be at least 1 (or None)")
        self.max_resume_attempts = max_resume_attempts
        self.lease = lease_for(lease, heartbeat)   # JournalError if they do not fit
        self.heartbeat_interval = heartbeat
        self._own_engine = engine is None
        if engine is None:
            assert url is not None  # exactly one of them, checked above
            # A typo is refused here; a missing SQLite file is made only with
            # upgrade_schema (chttp_core.store_urls).
            engine = make_engine(check_store_url(url, create=upgrade_schema, adapt=normalize_url,
                                                 create_hint=CREATE_HINT))
        self.engine = engine
        self.store = OplogStore(engine)
        self._upgrade_schema = upgrade_schema
        self._schema_ready = False
        self._own_client = http_client is None
        self.http_client = http_client or httpx.Client(transport=transport)
        self.retry = retry
        self.clock = clock
        self.sleep = sleep
        self.async_sleep = async_sleep
        self.async_clients = LoopClients(lambda: httpx.AsyncClient(transport=async_transport),
                                         given=async_http_client)
        self._schema_lock = threading.Lock()
        self.acknowledger = Acknowledger(self.http_client, clock=clock, timeout=retry.timeout,
                                         enabled=acknowledge)
        self.heartbeat = Heartbeat(self.store, clock=clock, lease=self.lease, interval=heartbeat,
                                   acknowledger=self.acknowledger)
        # resume_all()'s runs past its timeout, stopped at exit and by close().
        self.background = Background(lambda: self.sleep, lambda: self.async_sleep)
        self.closed = False  # True once close() ran (the exit hook then has nothing to do)
        # A script that ends without close() still acknowledges its answers (bounded).
        atexit.register(_at_exit, weakref.ref(self))

    def __repr__(self) -> str:
        return f"<Journal {self.engine.url.render_as_string(hide_password=True)}>"

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """:meth:`close` from a running loop (``async with Journal(…)``): it waits for the
        queued acknowledgements and the engine in a worker thread, not on the loop."""
        await run_blocking(self.close)

    @property
    def acknowledge(self) -> bool:
        """Whether answers are acknowledged (DELETE) in the background."""
        return self.acknowledger.enabled

    @acknowledge.setter
    def acknowledge(self, value: bool) -> None:
        self.acknowledger.enabled = value

    @property
    def services(self) -> RunServices:
        """What a run of this journal writes and sends with (made per run)."""
        return RunServices(store=self.store, acknowledger=self.acknowledger,
                           http_client=self.http_client, retry=self.retry, clock=self.clock,
                           sleep=self.background.sleep, lease=self.lease, heartbeat=self.heartbeat)

    # -- schema --------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Upgrade (or check) the schema once; called before the first database access.

        Under a lock: a hundred async runs started at once call it from as many worker
        threads, and one migration is enough.
        """
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            if self._upgrade_schema:
                if migrate.current_revision(self.engine) != migrate.head_revision():
                    migrate.upgrade(self.engine)
            else:
                migrate.check_schema(self.engine)
            self._schema_ready = True

    # -- abandoning (running and resuming: chttp_client.runs) -----------------------------

    def abandon(self, oplog_id: str, reason: str) -> None:
        """Dead-letter the open oplog ``oplog_id``: it is never resumed again.

        It stays visible (``list``/``show``: state ``abandoned`` with ``reason``) until
        ``purge`` removes it like a failed oplog; ``resume`` raises
        :class:`OplogAbandonedError`. Its messages: an answered one is still
        acknowledged by ``resume_all()``; a send recorded but never answered is not
        resent (the receiver may have run it; it forgets it after its retention). A live
        run of it fails at its next journal write with :class:`OplogAbandonedError` and
        ``reason``, sending nothing more. :class:`JournalError` if it is not open.
        """
        self.ensure_schema()
        info = self.store.get(oplog_id, strict=False)  # an unreadable oplog can be abandoned
        if info is None:
            raise UnknownOplogError(oplog_id)
        if info.state != OPLOG_OPEN:
            raise JournalError(f"oplog {oplog_id} is {info.state}, not open: nothing to abandon")
        try:
            self._run_sync(self._abandon_steps(info, reason))
        except OplogAbandonedError:
            return

    def take_lease(self, oplog_id: str, *, force: bool = False) -> str:
        """Lease the open oplog to a new owner of this process and return that owner.

        :class:`OplogBusyError` if another live process holds it (unless ``force``).
        """
        owner = new_owner()
        now = self.clock()
        self.store.take_lease(oplog_id, owner, now=now, lease=self.lease, force=force)
        return owner

    def purge(self, *, older_than: timedelta, horizon: timedelta = RECEIVER_RETENTION,
              batch_size: int = 1000, max_batches: int | None = None) -> int:
        """Delete finished oplogs (and their steps) whose completion is older than ``older_than``.

        Never an open oplog, except a receiver handler's (``in-…``): those are never
        marked done and go once their last activity is older than ``horizon`` (default
        15 days, the receiver's default retention): once the receiver has forgotten the
        incoming message, its retry can no longer be replayed anyway (docs/protocol.rst §4:
        senders stop retrying well before that). A finished oplog whose answered send
        still waits for its acknowledgement is kept until ``horizon`` too. Runs in
        batches of ``batch_size``, each its own short transaction (PostgreSQL: ``FOR
        UPDATE SKIP LOCKED``); returns how many oplogs were deleted. Details:
        :mod:`chttp_client.retention`.
        """
        self.ensure_schema()
        return self.store.purge(now=self.clock(), older_than=older_than, horizon=horizon,
                                batch_size=batch_size, max_batches=max_batches)

    def purge_kept(self, *, older_than: timedelta,
                   horizon: timedelta = RECEIVER_RETENTION) -> dict[str, int]:
        """What :meth:`purge` with these ages keeps past ``older_than``, by reason
        (``unacknowledged``, ``horizon``: :func:`chttp_client.retention.kept`)."""
        self.ensure_schema()
        return retention.kept(self.engine, now=self.clock(), older_than=older_than, horizon=horizon)

    def unacknowledged(self, oplog_ids: builtins.list[str]) -> set[str]:
        """Those of ``oplog_ids`` with an answer whose acknowledgement is not recorded yet."""
        self.ensure_schema()
        return retention.unacknowledged(self.engine, oplog_ids)

    # -- reading ---------------------------------------------------------------------------

    def list_open(self) -> builtins.list[OplogInfo]:
        """Open oplogs, oldest first (without their steps)."""
        return self.list(state=OPLOG_OPEN)

    def list(self, *, state: str | None = None, limit: int | None = None) -> builtins.list[OplogInfo]:
        """Oplogs oldest first (without their steps), of one ``state`` if given."""
        self.ensure_schema()
        return self.store.list(state=state, limit=limit)

    def get(self, oplog_id: str) -> OplogInfo:
        """One oplog with its steps; :class:`UnknownOplogError` if there is none."""
        self.ensure_schema()
        info = self.store.get(oplog_id)
        if info is None:
            raise UnknownOplogError(oplog_id)
        return info

    # -- acknowledgements ----------------------------------------------------------------------

    def wait_for_acknowledgements(self) -> None:
        """Block until queued DELETEs were tried, then record the successful ones."""
        self.acknowledger.join()
        self.store.mark_acknowledged(self.acknowledger.take_marks())

    def acknowledge_pending(self) -> int:
        """DELETE every answered message nobody acknowledged or claimed; return how many succeeded.

        Each is claimed first (:meth:`OplogStore.claim_pending_acks
        <chttp_client.oplog_store.OplogStore.claim_pending_acks>`), so concurrent
        resumers and the live process that queued it never DELETE one message twice.
        """
        self.ensure_schema()
        claimed = self.store.claim_pending_acks(claim=self.lease)
        done = sum(self.acknowledger.send(p.oplog_id, p.number, p.url) for p in claimed)
        self.store.mark_acknowledged(self.acknowledger.take_marks())
        return done

    def flush_acknowledgements(self, timeout: float | None = 2.0) -> None:
        """Wait up to ``timeout`` seconds for the queued DELETEs, then record those taken."""
        self.acknowledger.join(timeout)
        marks = self.acknowledger.take_marks()
        if marks:
            self.store.mark_acknowledged(marks)

    def close(self) -> None:
        """Stop background resumes, finish queued acknowledgements (at most ~2 s), then
        release the HTTP client and the engine."""
        self.closed = True
        self.background.stop()
        self.heartbeat.close()
        self.acknowledger.close(timeout=2.0)
        marks = self.acknowledger.take_marks()
        if marks:
            self.store.mark_acknowledged(marks)
        if self._own_client:
            self.http_client.close()
        if self._own_engine:
            self.engine.dispose()


def _at_exit(reference: weakref.ref[Journal]) -> None:
    """At interpreter exit: stop a journal's background resumes and flush its acknowledgements."""
    journal = reference()
    if journal is None or journal.closed:
        return
    journal.background.stop()
    try:
        journal.flush_acknowledgements(timeout=2.0)
    except Exception as error:  # noqa: BLE001 - the next resume_all() repeats the DELETEs
        log.info("chttp: acknowledgements not recorded at exit (%s); resume_all() repeats them", error)
