"""``Journal``: where resumable functions record their oplogs, and how they are resumed.

A journal is a database (SQLite file by default, or PostgreSQL) holding the tables of
:mod:`chttp_core.schema`, plus the HTTP client the certified sends use. Creating one is
cheap; the schema is brought to this code's head lazily, on first use, through the
project's one Alembic lineage (:func:`chttp_core.migrate.upgrade`), so
``Journal("sqlite:///client.db")`` just works. Hosts that run migrations themselves pass
``upgrade_schema=False`` and get :class:`~chttp_core.errors.SchemaOutOfDateError`
naming the command if the schema is behind.

The journal is a thin front over three parts with one job each:

* :class:`~chttp_client.oplog_store.OplogStore` — every SQL statement (oplogs, steps,
  leases, acknowledgement marks), behind plain records;
* :class:`~chttp_client.context.ResumableContext` — the step logic of one run (replay,
  determinism checks, recording, the write buffer);
* :class:`~chttp_client.acknowledger.Acknowledger` — the background DELETEs.

Functions are registered *globally* by ``(name, version)`` (:mod:`chttp_client.registry`,
re-exported here), not per journal object.

Leases (:mod:`chttp_client.leases`): a run holds its oplog's lease; every commit of the
run renews it and fails with :class:`~chttp_client.errors.OplogBusyError` if it was
taken over, so two processes never run one oplog at once. A lease's deadline is kept by
the database's clock, not ``clock=`` (hosts sharing a journal need not agree on the
time); a test that needs a lease gone expires it there
(:func:`chttp_client.testing.expire_leases`).
"""

from __future__ import annotations

import builtins
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

import httpx
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from chttp_client import codec, telemetry
from chttp_client.acknowledger import Acknowledger
from chttp_client.codec import CodecError
from chttp_client.context import ResumableContext, RunServices
from chttp_client.errors import (
    JournalError,
    JournalUnavailable,
    NonDeterminismError,
    OplogAbandonedError,
    OplogBusyError,
    UnknownFunctionError,
)
from chttp_client.heartbeat import Heartbeat
from chttp_client.leases import new_owner
from chttp_client.oplog_store import OplogStore
from chttp_client.quarantine import log_unreadable
from chttp_client.records import CELERY_PREFIX, INCOMING_PREFIX, OplogInfo
from chttp_client.registry import register, registered_functions, registered_versions, unregister
from chttp_client.retention import RECEIVER_RETENTION
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

@dataclass(frozen=True)
class ResumeOutcome:
    """What :meth:`Journal.resume_all` did with one open oplog.

    ``status`` is ``done`` (``value`` holds the result), ``failed`` (the function raised
    ``error``, now recorded), ``refused`` (unknown version: the oplog is left open and
    intact), ``unreadable`` (quarantined, :mod:`chttp_client.quarantine`), ``abandoned``
    (non-determinism, or more resumes without progress than ``max_resume_attempts``:
    dead-lettered now) or ``busy`` (another live process holds it); ``error`` says why.
    """

    oplog_id: str
    function: str
    version: int
    status: str
    value: Any = None
    error: BaseException | None = None


def _recorded_result(info: OplogInfo) -> Any:
    result = info.result or {}
    where = f"oplog {info.id} result"
    if "error" in result:
        raise codec.rebuild_exception(result["error"], where=where)
    return codec.decode(result.get("value"), where=where)


class Journal:
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
        # How long a run's lease lasts without a commit renewing it (database clock).
        lease: timedelta = timedelta(minutes=10),
        # DELETE on X-Message-URL after each answer (docs/protocol.rst §3), in the background.
        acknowledge: bool = True,
        # Time and sleep; tests replace them so that nothing waits on the wall clock.
        # Lease deadlines do not use it: they are the database's (chttp_client.leases).
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        # Resumes of one oplog that make no progress (no commit: a crash loop) before
        # resume()/resume_all() abandon it instead (None: never).
        max_resume_attempts: int | None = 5,
    ) -> None:
        if (url is None) == (engine is None):
            raise JournalError("give exactly one of url or engine=")
        if http_client is not None and transport is not None:
            raise JournalError("give http_client= or transport=, not both")
        if max_resume_attempts is not None and max_resume_attempts < 1:
            raise JournalError("max_resume_attempts must be at least 1 (or None)")
        self.max_resume_attempts = max_resume_attempts
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
        self.lease = lease
        self.clock = clock
        self.sleep = sleep
        self.acknowledger = Acknowledger(self.http_client, clock=clock, timeout=retry.timeout,
                                         enabled=acknowledge)
        self.heartbeat = Heartbeat(self.store, clock=clock, lease=lease)

    def __repr__(self) -> str:
        return f"<Journal {self.engine.url.render_as_string(hide_password=True)}>"

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

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
                           sleep=self.sleep, lease=self.lease, heartbeat=self.heartbeat)

    # -- schema --------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Upgrade (or check) the schema once; called before the first database access."""
        if self._schema_ready:
            return
        if self._upgrade_schema:
            if migrate.current_revision(self.engine) != migrate.head_revision():
                migrate.upgrade(self.engine)
        else:
            migrate.check_schema(self.engine)
        self._schema_ready = True

    # -- running -------------------------------------------------------------------------

    def run(self, name: str, version: int, function: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any], *, oplog_id: str | None = None,
            message_id_for: Callable[[int], str] | None = None) -> Any:
        """Start a new oplog for ``function(*args, **kwargs)`` and run it to the end.

        ``oplog_id`` chooses the new oplog's id (default: a random UUID);
        ``message_id_for(step)`` the ids of its sends (default: random UUIDs).
        """
        self.ensure_schema()
        context = ResumableContext(
            self.services, oplog_id=oplog_id or str(uuid.uuid4()), function=name,
            version=version, arguments=codec.dumps({"args": list(args), "kwargs": kwargs}),
            message_id_for=message_id_for,
        )
        return context.call(function)

    def resume(self, oplog_id: str, *, force: bool = False,
               message_id_for: Callable[[int], str] | None = None) -> Any:
        """Run the open oplog ``oplog_id`` to its end by replaying it; return its result.

        A finished oplog returns (or raises) its recorded result without running anything.
        ``force`` takes the lease even from a live owner (the crash helper uses it).
        """
        self.ensure_schema()
        return self._resume(self.get(oplog_id), force=force, message_id_for=message_id_for)

    def _resume(self, info: OplogInfo, *, force: bool = False, only_open: bool = False,
                message_id_for: Callable[[int], str] | None = None) -> Any:
        if info.state != OPLOG_OPEN:
            if only_open:  # resume_all: another process finished it since we listed it
                raise OplogBusyError(info.id, "nobody: it finished meanwhile")
            return _recorded_result(info)
        functions = registered_functions(info.function)
        function = functions.get(info.version)
        if function is None:
            raise UnknownFunctionError(info.id, info.function, info.version, sorted(functions))
        owner = new_owner()
        now = self.clock()
        attempts = self.store.take_lease(info.id, owner, now=now, lease=self.lease,
                                         force=force, count_attempt=True)
        if self.max_resume_attempts is not None and attempts > self.max_resume_attempts:
            self._abandon(info, f"{attempts - 1} resumes made no progress "
                                f"(max_resume_attempts={self.max_resume_attempts})")
        telemetry.resumed()
        context = ResumableContext(
            self.services, oplog_id=info.id, function=info.function, version=info.version,
            arguments=self.store.arguments(info.id), recorded=info.steps, stored=True,
            owner=owner, message_id_for=message_id_for,
        )
        try:
            return context.call(function)
        except (NonDeterminismError, CodecError):  # nothing recorded: the oplog stays open
            self.store.release_lease(info.id, owner)
            raise

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
            raise JournalError(f"no oplog {oplog_id}")
        if info.state != OPLOG_OPEN:
            raise JournalError(f"oplog {oplog_id} is {info.state}, not open: nothing to abandon")
        try:
            self._abandon(info, reason)
        except OplogAbandonedError:
            return

    def _abandon(self, info: OplogInfo, reason: str) -> None:
        """Record the abandonment, report it once (here), raise it."""
        error = OplogAbandonedError(info.id, reason)
        if not self.store.abandon(info.id, reason=reason, now=self.clock(),
                                  result={"error": codec.exception_record(error)}):
            raise OplogBusyError(info.id, "nobody: it finished meanwhile")
        telemetry.oplog_state("abandoned")
        log.warning("chttp: oplog %s (%s v%s) abandoned: %s", info.id, info.function, info.version, reason)
        raise error

    def take_lease(self, oplog_id: str, *, force: bool = False) -> str:
        """Lease the open oplog to a new owner of this process and return that owner.

        :class:`OplogBusyError` if another live process holds it (unless ``force``).
        """
        owner = new_owner()
        now = self.clock()
        self.store.take_lease(oplog_id, owner, now=now, lease=self.lease, force=force)
        return owner

    def resume_all(self) -> builtins.list[ResumeOutcome]:
        """Resume every open oplog this process can lease, and retry pending acknowledgements.

        Never raises for one oplog's trouble: each gets a :class:`ResumeOutcome`. An oplog
        left ``busy`` (another live process holds it) or ``refused`` (unknown version) is
        also logged at WARNING on the ``chttp_client`` logger, so a start-up resume never
        skips one silently. One holding a record this version cannot read is
        *quarantined* (:mod:`chttp_client.quarantine`): left open, not run, ``unreadable``,
        logged with a count and the ids; the others go on. One that diverges (the code
        changed) or was resumed more than ``max_resume_attempts`` times without progress
        is *abandoned* (:meth:`abandon`), reported once at WARNING, and not tried again.
        """
        self.ensure_schema()
        self.acknowledge_pending()
        outcomes = []
        for listed in self.list_open():
            if listed.function.startswith((INCOMING_PREFIX, CELERY_PREFIX)):
                continue  # driven by incoming retries / Celery's redelivery, not by us
            try:
                value = self._resume(self.get(listed.id), only_open=True)
            except OplogBusyError as error:
                log.warning("chttp: oplog %s (%s v%s) not resumed, busy: %s",
                            listed.id, listed.function, listed.version, error)
                outcomes.append(ResumeOutcome(listed.id, listed.function, listed.version, "busy", error=error))
            except UnknownFunctionError as error:
                log.warning("chttp: oplog %s (%s v%s) not resumed, refused: %s",
                            listed.id, listed.function, listed.version, error)
                outcomes.append(ResumeOutcome(listed.id, listed.function, listed.version, "refused", error=error))
            except CodecError as error:  # quarantined: fixing the row resumes it
                log.warning("chttp: oplog %s (%s v%s) not resumed, unreadable (left open): %s",
                            listed.id, listed.function, listed.version, error)
                outcomes.append(ResumeOutcome(listed.id, listed.function, listed.version,
                                              "unreadable", error=error))
            except NonDeterminismError as error:
                # The code changed: no resume will fix it. Not the function's own failure.
                try:
                    self._abandon(listed, str(error))
                except (OplogAbandonedError, OplogBusyError) as abandoned:
                    outcomes.append(ResumeOutcome(listed.id, listed.function, listed.version,
                                                  "abandoned", error=abandoned))
            except JournalUnavailable:  # the whole journal's trouble (not one oplog's): raised
                raise
            except OplogAbandonedError as error:  # too many resumes without progress
                outcomes.append(ResumeOutcome(listed.id, listed.function, listed.version, "abandoned", error=error))
            except Exception as error:  # the function's own outcome, now recorded
                outcomes.append(ResumeOutcome(listed.id, listed.function, listed.version, "failed", error=error))
            else:
                outcomes.append(ResumeOutcome(listed.id, listed.function, listed.version, "done", value=value))
        log_unreadable(outcomes)
        return outcomes

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

    # -- reading ---------------------------------------------------------------------------

    def list_open(self) -> builtins.list[OplogInfo]:
        """Open oplogs, oldest first (without their steps)."""
        return self.list(state=OPLOG_OPEN)

    def list(self, *, state: str | None = None, limit: int | None = None) -> builtins.list[OplogInfo]:
        """Oplogs oldest first (without their steps), of one ``state`` if given."""
        self.ensure_schema()
        return self.store.list(state=state, limit=limit)

    def get(self, oplog_id: str) -> OplogInfo:
        """One oplog with its steps; :class:`JournalError` if there is none."""
        self.ensure_schema()
        info = self.store.get(oplog_id)
        if info is None:
            raise JournalError(f"no oplog {oplog_id}")
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

    def close(self) -> None:
        """Finish queued acknowledgements, then release the HTTP client and the engine."""
        self.heartbeat.close()
        self.acknowledger.close()
        marks = self.acknowledger.take_marks()
        if marks:
            self.store.mark_acknowledged(marks)
        if self._own_client:
            self.http_client.close()
        if self._own_engine:
            self.engine.dispose()
