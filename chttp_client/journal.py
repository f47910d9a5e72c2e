"""``Journal``: where resumable functions record their oplogs, and how they are resumed.

A journal is a database (SQLite file by default, or PostgreSQL) holding the tables of
:mod:`chttp_core.schema`, plus the HTTP client the certified sends use. Creating one is
cheap; the schema is brought to this code's head lazily, on first use, through the
project's one Alembic lineage (``chttp_core.migrate.upgrade``, imported only then), so
``Journal("sqlite:///client.db")`` just works. Hosts that run migrations themselves pass
``upgrade_schema=False`` and get :class:`~chttp_server.errors.SchemaOutOfDateError`
naming the command if the schema is behind.

Functions are registered *globally* by ``(name, version)`` (:func:`register`), not per
journal object: ``chttp-client resume --db URL --import app`` opens its own journal and
still finds the functions that ``app`` decorated.

Leases: an oplog being run is leased to ``host/pid/token`` until ``lease_expires_at``.
Taking a lease is a compare-and-swap ``UPDATE … WHERE lease_owner = <what we saw>``,
atomic on PostgreSQL (row lock) and SQLite (``BEGIN IMMEDIATE``), so two processes
resuming at once never run the same oplog. A lease is free when it expired, or when its
owner is a process on this host that no longer exists (a SIGKILLed sender is resumed at
once, not after the lease time). Every commit of a run renews the lease and fails with
:class:`~chttp_client.errors.OplogBusyError` if it was taken over.
"""

from __future__ import annotations

import builtins
import logging
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, overload

import httpx
from sqlalchemy import Connection, Engine, and_, insert, select, update
from sqlalchemy.engine import URL

from chttp_client import codec, retention
from chttp_core import migrate
from chttp_client.context import ResumableContext, StepRecord
from chttp_core.db import make_engine
from chttp_client.errors import JournalError, NonDeterminismError, OplogBusyError, UnknownFunctionError
from chttp_core.schema import (
    KIND_SEND,
    OPLOG_DONE,
    OPLOG_FAILED,
    OPLOG_OPEN,
    STEP_DONE,
    oplog_steps,
    oplogs,
)
from chttp_client.sending import RetryPolicy, utcnow
from chttp_client.retention import RECEIVER_RETENTION

__all__ = ["Journal", "OplogInfo", "ResumeOutcome", "register", "registered_versions", "INCOMING_PREFIX"]

log = logging.getLogger("chttp_client")

#: Oplogs of receiver handlers (chttp_client.incoming) are driven by incoming retries,
#: never by resume_all().
INCOMING_PREFIX = "chttp.incoming"

_REGISTRY: dict[str, dict[int, Callable[..., Any]]] = {}
_REGISTRY_LOCK = threading.Lock()


def register(name: str, version: int, function: Callable[..., Any]) -> None:
    """Make ``function`` the code that runs (and replays) oplogs of ``name``/``version``."""
    with _REGISTRY_LOCK:
        _REGISTRY.setdefault(name, {})[version] = function


def registered_versions(name: str) -> list[int]:
    return sorted(_REGISTRY.get(name, {}))


@dataclass(frozen=True)
class OplogInfo:
    """An oplog as ``list``/``show`` print it."""

    id: str
    function: str
    version: int
    state: str
    arguments: Any
    result: Any
    lease_owner: str | None
    created_at: datetime
    steps: tuple[StepRecord, ...] = ()


@dataclass(frozen=True)
class ResumeOutcome:
    """What :meth:`Journal.resume_all` did with one open oplog.

    ``status`` is ``done`` (``value`` holds the result), ``failed`` (the function raised
    ``error``, now recorded), ``refused`` (unknown version or non-determinism: the oplog
    is left open and intact) or ``busy`` (another live process holds it).
    """

    oplog_id: str
    function: str
    version: int
    status: str
    value: Any = None
    error: BaseException | None = None


@overload
def _aware(moment: datetime) -> datetime: ...


@overload
def _aware(moment: None) -> None: ...


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        # Retries, backoff, per-attempt timeout and per-send deadline (PROTOCOL.md §5).
        retry: RetryPolicy = RetryPolicy(),
        # How long a run's lease lasts without a commit renewing it.
        lease: timedelta = timedelta(minutes=10),
        # DELETE on X-Message-URL after each answer (PROTOCOL.md §3), in the background.
        acknowledge: bool = True,
        # Time and sleep; tests replace them so that nothing waits on the wall clock.
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if (url is None) == (engine is None):
            raise JournalError("give exactly one of url or engine=")
        if http_client is not None and transport is not None:
            raise JournalError("give http_client= or transport=, not both")
        self._own_engine = engine is None
        if engine is None:
            assert url is not None  # exactly one of them, checked above
            engine = make_engine(url)
        self.engine = engine
        self._upgrade_schema = upgrade_schema
        self._schema_ready = False
        self._own_client = http_client is None
        self.http_client = http_client or httpx.Client(transport=transport)
        self.retry = retry
        self.lease = lease
        self.acknowledge = acknowledge
        self.clock = clock
        self.sleep = sleep
        #: Called with a :class:`~chttp_client.context.StepEvent` at each point of each
        #: executed step. For tests and the crash helper: raise or kill to simulate a crash.
        self.fault_hook: Callable[[Any], None] | None = None
        self._lock = threading.Lock()
        self._acked: list[tuple[str, int, datetime]] = []
        self._ack_queue: queue.Queue[tuple[str, int, str] | None] = queue.Queue()
        self._ack_thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Journal {self.engine.url.render_as_string(hide_password=True)}>"

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

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

    def _owner(self) -> str:
        return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"

    def run(self, name: str, version: int, function: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any], **context_options: Any) -> Any:
        """Start a new oplog for ``function(*args, **kwargs)`` and run it to the end."""
        self.ensure_schema()
        arguments = codec.dumps({"args": list(args), "kwargs": kwargs})
        oplog_id = context_options.pop("oplog_id", None) or str(uuid.uuid4())
        context = ResumableContext(
            self, oplog_id=oplog_id, function=name, version=version,
            arguments=arguments, owner=self._owner(), **context_options,
        )
        return self._execute(context, function)

    def _execute(self, context: ResumableContext, function: Callable[..., Any]) -> Any:
        call = codec.loads(context._arguments)
        try:
            value = function(*call["args"], chttp_context=context, **call["kwargs"])
        except NonDeterminismError:
            raise
        except Exception as error:
            if context._poisoned is not None:
                raise context._poisoned from error
            context._flush_result(OPLOG_FAILED, {"error": codec.exception_record(error)})
            raise
        if context._poisoned is not None:
            raise context._poisoned
        try:
            encoded = codec.encode(value)
        except TypeError as error:
            context._flush_result(OPLOG_FAILED, {"error": codec.exception_record(error)})
            raise
        context._flush_result(OPLOG_DONE, {"value": encoded})
        return codec.decode(encoded)

    def resume(self, oplog_id: str, *, force: bool = False, _only_open: bool = False,
               **context_options: Any) -> Any:
        """Run the open oplog ``oplog_id`` to its end by replaying it; return its result.

        A finished oplog returns (or raises) its recorded result without running anything.
        ``force`` takes the lease even from a live owner (the crash helper uses it).
        """
        self.ensure_schema()
        info = self.get(oplog_id)
        if info.state != OPLOG_OPEN:
            if _only_open:  # resume_all: another process finished it since we listed it
                raise OplogBusyError(oplog_id, "nobody: it finished meanwhile")
            return self._recorded_result(info)
        functions = _REGISTRY.get(info.function, {})
        function = functions.get(info.version)
        if function is None:
            raise UnknownFunctionError(oplog_id, info.function, info.version, sorted(functions))
        owner = self._owner()
        self._take_lease(info, owner, force=force)
        context = ResumableContext(
            self, oplog_id=oplog_id, function=info.function, version=info.version,
            arguments=self._arguments_text(oplog_id), recorded=info.steps, stored=True,
            owner=owner, **context_options,
        )
        try:
            return self._execute(context, function)
        except NonDeterminismError:
            self._release_lease(oplog_id, owner)
            raise

    def resume_all(self) -> builtins.list[ResumeOutcome]:
        """Resume every open oplog this process can lease, and retry pending acknowledgements.

        Never raises for one oplog's trouble: each gets a :class:`ResumeOutcome`. An oplog
        left ``busy`` (another live process holds it) or ``refused`` (unknown version,
        non-determinism) is also logged at WARNING on the ``chttp_client`` logger, so a
        start-up resume never skips one silently.
        """
        self.ensure_schema()
        self.acknowledge_pending()
        outcomes = []
        for info in self.list_open():
            if info.function.startswith(INCOMING_PREFIX):
                continue
            try:
                value = self.resume(info.id, _only_open=True)
            except OplogBusyError as error:
                log.warning("chttp: oplog %s (%s v%s) not resumed, busy: %s",
                            info.id, info.function, info.version, error)
                outcomes.append(ResumeOutcome(info.id, info.function, info.version, "busy", error=error))
            except (UnknownFunctionError, NonDeterminismError) as error:
                log.warning("chttp: oplog %s (%s v%s) not resumed, refused: %s",
                            info.id, info.function, info.version, error)
                outcomes.append(ResumeOutcome(info.id, info.function, info.version, "refused", error=error))
            except Exception as error:  # the function's own outcome, now recorded
                outcomes.append(ResumeOutcome(info.id, info.function, info.version, "failed", error=error))
            else:
                outcomes.append(ResumeOutcome(info.id, info.function, info.version, "done", value=value))
        return outcomes

    def purge(self, *, older_than: timedelta, horizon: timedelta = RECEIVER_RETENTION,
              batch_size: int = 1000, max_batches: int | None = None) -> int:
        """Delete finished oplogs (and their steps) whose completion is older than ``older_than``.

        Never an open oplog, except a receiver handler's (``in-…``): those are never
        marked done and go once their last activity is older than ``horizon`` (default
        15 days, the receiver's default retention): once the receiver has forgotten the
        incoming message, its retry can no longer be replayed anyway (PROTOCOL.md §4:
        senders stop retrying well before that). A finished oplog whose answered send
        still waits for its acknowledgement is kept until ``horizon`` too. Runs in
        batches of ``batch_size``, each its own short transaction (PostgreSQL: ``FOR
        UPDATE SKIP LOCKED``); returns how many oplogs were deleted. Details:
        :mod:`chttp_client.retention`.
        """
        return retention.purge(self, older_than=older_than, horizon=horizon,
                               batch_size=batch_size, max_batches=max_batches)

    @staticmethod
    def _recorded_result(info: OplogInfo) -> Any:
        result = info.result or {}
        if "error" in result:
            raise codec.rebuild_exception(result["error"])
        return codec.decode(result.get("value"))

    # -- reading ---------------------------------------------------------------------------

    def list_open(self) -> builtins.list[OplogInfo]:
        """Open oplogs, oldest first (without their steps)."""
        return self.list(state=OPLOG_OPEN)

    def list(self, *, state: str | None = None, limit: int | None = None) -> builtins.list[OplogInfo]:
        self.ensure_schema()
        query = select(oplogs).order_by(oplogs.c.created_at, oplogs.c.id)
        if state is not None:
            query = query.where(oplogs.c.state == state)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [self._info(row) for row in connection.execute(query)]

    def get(self, oplog_id: str) -> OplogInfo:
        """One oplog with its steps; :class:`JournalError` if there is none."""
        self.ensure_schema()
        with self.engine.connect() as connection:
            row = connection.execute(select(oplogs).where(oplogs.c.id == oplog_id)).first()
            if row is None:
                raise JournalError(f"no oplog {oplog_id}")
            steps = tuple(self._steps(connection, oplog_id))
        return self._info(row, steps)

    def _arguments_text(self, oplog_id: str) -> str:
        with self.engine.connect() as connection:
            return str(connection.execute(
                select(oplogs.c.arguments).where(oplogs.c.id == oplog_id)).scalar_one())

    @staticmethod
    def _info(row: Any, steps: tuple[StepRecord, ...] = ()) -> OplogInfo:
        import json

        return OplogInfo(
            id=row.id, function=row.function, version=row.version, state=row.state,
            arguments=codec.loads(row.arguments),
            result=json.loads(row.result) if row.result is not None else None,
            lease_owner=row.lease_owner, created_at=_aware(row.created_at),
            steps=steps,
        )

    @staticmethod
    def _steps(connection: Connection, oplog_id: str) -> Iterator[StepRecord]:
        import json

        rows = connection.execute(
            select(oplog_steps).where(oplog_steps.c.oplog_id == oplog_id).order_by(oplog_steps.c.number)
        )
        for row in rows:
            yield StepRecord(
                number=row.number, kind=row.kind, name=row.name, state=row.state,
                outcome=json.loads(row.outcome) if row.outcome is not None else None,
                message_id=row.message_id, fingerprint=row.fingerprint,
                request=json.loads(row.request) if row.request is not None else None,
                first_sent_at=_aware(row.first_sent_at),
                response=json.loads(row.response) if row.response is not None else None,
                message_url=row.message_url, acknowledged_at=_aware(row.acknowledged_at),
            )

    # -- writing (called by ResumableContext) ------------------------------------------------

    @staticmethod
    def _step_values(step: StepRecord) -> dict[str, Any]:
        import json

        return {
            "kind": step.kind, "name": step.name, "state": step.state,
            "outcome": json.dumps(step.outcome) if step.outcome is not None else None,
            "message_id": step.message_id, "fingerprint": step.fingerprint,
            "request": json.dumps(step.request) if step.request is not None else None,
            "first_sent_at": step.first_sent_at,
            "response": json.dumps(step.response) if step.response is not None else None,
            "message_url": step.message_url,
        }

    def _open_oplog(self, connection: Connection, context: ResumableContext, now: datetime) -> None:
        """Insert the oplog row (first write of a run) or renew our lease on it."""
        if not context._stored:
            connection.execute(insert(oplogs).values(
                id=context.oplog_id, function=context.function, version=context.version,
                arguments=context._arguments, state=OPLOG_OPEN, lease_owner=context._owner,
                lease_expires_at=now + self.lease, created_at=now, updated_at=now,
            ))
            return
        renewed = connection.execute(
            update(oplogs)
            .where(oplogs.c.id == context.oplog_id, oplogs.c.lease_owner == context._owner)
            .values(lease_expires_at=now + self.lease, updated_at=now)
        ).rowcount
        if renewed != 1:
            raise OplogBusyError(context.oplog_id, "another process (our lease was taken over)")

    def _write_steps(self, connection: Connection, context: ResumableContext,
                     inserts: builtins.list[StepRecord], answers: builtins.list[StepRecord]) -> None:
        """Insert new steps; bring answered send steps (stored as ``recorded``) to ``done``."""
        if inserts:
            connection.execute(insert_steps(), [
                {"oplog_id": context.oplog_id, "number": step.number, **self._step_values(step)}
                for step in inserts
            ])
        for step in answers:
            updated = connection.execute(
                update(oplog_steps)
                .where(oplog_steps.c.oplog_id == context.oplog_id,
                       oplog_steps.c.number == step.number)
                .values(**self._step_values(step))
            ).rowcount
            if updated != 1:  # an answer always follows its own intent commit
                raise JournalError(f"oplog {context.oplog_id} has no step {step.number} to answer")

    def _commit_steps(self, context: ResumableContext, inserts: builtins.list[StepRecord],
                      answers: builtins.list[StepRecord]) -> None:
        """One commit of a run: lease renewed (or oplog row inserted), steps, ack marks."""
        now = self.clock()
        with self.engine.begin() as connection:
            self._open_oplog(connection, context, now)
            self._write_steps(connection, context, inserts, answers)
            self._write_acks(connection)

    def _finish(self, context: ResumableContext, inserts: builtins.list[StepRecord],
                answers: builtins.list[StepRecord], state: str, result: dict[str, Any]) -> None:
        """The run's last commit: buffered steps and the oplog's result, lease released."""
        import json

        now = self.clock()
        with self.engine.begin() as connection:
            self._open_oplog(connection, context, now)
            self._write_steps(connection, context, inserts, answers)
            connection.execute(
                update(oplogs).where(oplogs.c.id == context.oplog_id).values(
                    state=state, result=json.dumps(result), finished_at=now, updated_at=now,
                    lease_owner=None, lease_expires_at=None,
                )
            )
            self._write_acks(connection)

    def _renew_lease(self, context: ResumableContext) -> None:
        """Between retry attempts: renew the lease once half of it has passed."""
        if not context._stored:
            return
        now = self.clock()
        last = context._lease_renewed_at
        if last is not None and now - last < self.lease / 2:
            return
        with self.engine.begin() as connection:
            self._open_oplog(connection, context, now)
        context._lease_renewed_at = now

    def _take_lease(self, info: OplogInfo, owner: str, *, force: bool) -> None:
        now = self.clock()
        with self.engine.begin() as connection:
            row = connection.execute(
                select(oplogs.c.state, oplogs.c.lease_owner, oplogs.c.lease_expires_at)
                .where(oplogs.c.id == info.id)
            ).one()
            if row.state != OPLOG_OPEN:
                raise OplogBusyError(info.id, "nobody: it finished meanwhile")
            seen = row.lease_owner
            if seen is not None and not force and not self._lease_is_free(seen, _aware(row.lease_expires_at), now):
                raise OplogBusyError(info.id, seen)
            condition = oplogs.c.lease_owner.is_(None) if seen is None else oplogs.c.lease_owner == seen
            taken = connection.execute(
                update(oplogs)
                .where(oplogs.c.id == info.id, oplogs.c.state == OPLOG_OPEN, condition)
                .values(lease_owner=owner, lease_expires_at=now + self.lease, updated_at=now)
            ).rowcount
        if taken != 1:
            raise OplogBusyError(info.id, "a concurrent resumer")

    def _release_lease(self, oplog_id: str, owner: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(oplogs).where(oplogs.c.id == oplog_id, oplogs.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    @staticmethod
    def _lease_is_free(owner: str, expires_at: datetime | None, now: datetime) -> bool:
        if expires_at is None or expires_at <= now:
            return True
        host, _, rest = owner.partition("/")
        pid_text = rest.partition("/")[0]
        if host == socket.gethostname() and pid_text.isdigit():
            return not _process_alive(int(pid_text))
        return False

    # -- acknowledgements ----------------------------------------------------------------------

    def _queue_ack(self, oplog_id: str, number: int, url: str) -> None:
        if not self.acknowledge:
            return
        with self._lock:
            if self._ack_thread is None or not self._ack_thread.is_alive():
                self._ack_thread = threading.Thread(
                    target=self._ack_worker, name="chttp-acknowledge", daemon=True)
                self._ack_thread.start()
        self._ack_queue.put((oplog_id, number, url))

    def _ack_worker(self) -> None:
        while True:
            item = self._ack_queue.get()
            try:
                if item is None:
                    return
                self._send_ack(*item)
            finally:
                self._ack_queue.task_done()

    def _send_ack(self, oplog_id: str, number: int, url: str) -> bool:
        """One best-effort DELETE; remembered for the next commit if the receiver took it."""
        try:
            response = self.http_client.request("DELETE", url, timeout=self.retry.timeout)
        except httpx.HTTPError as error:
            log.info("chttp: acknowledgement of %s failed, will retry on resume: %s", url, error)
            return False
        # 204 (again), 404 (purged) and 410 (gone) all mean nothing is left to acknowledge.
        if response.status_code in (200, 204, 404, 410):
            with self._lock:
                self._acked.append((oplog_id, number, self.clock()))
            return True
        log.info("chttp: acknowledgement of %s answered %s", url, response.status_code)
        return False

    def _write_acks(self, connection: Connection) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
        for oplog_id, number, moment in acked:
            connection.execute(
                update(oplog_steps)
                .where(oplog_steps.c.oplog_id == oplog_id, oplog_steps.c.number == number)
                .values(acknowledged_at=moment)
            )

    def wait_for_acknowledgements(self) -> None:
        """Block until queued DELETEs were tried, then record the successful ones."""
        if self._ack_thread is not None:
            self._ack_queue.join()
        with self._lock:
            if not self._acked:
                return
        with self.engine.begin() as connection:
            self._write_acks(connection)

    def acknowledge_pending(self) -> int:
        """DELETE every answered message not yet acknowledged; return how many succeeded."""
        query = select(oplog_steps.c.oplog_id, oplog_steps.c.number, oplog_steps.c.message_url).where(
            and_(oplog_steps.c.kind == KIND_SEND, oplog_steps.c.state == STEP_DONE,
                 oplog_steps.c.message_url.is_not(None), oplog_steps.c.acknowledged_at.is_(None))
        )
        with self.engine.connect() as connection:
            pending = list(connection.execute(query))
        done = sum(self._send_ack(row.oplog_id, row.number, row.message_url) for row in pending)
        if done:
            with self.engine.begin() as connection:
                self._write_acks(connection)
        return done

    def close(self) -> None:
        """Finish queued acknowledgements, then release the HTTP client and the engine."""
        if self._ack_thread is not None and self._ack_thread.is_alive():
            self.wait_for_acknowledgements()
            self._ack_queue.put(None)
            self._ack_thread.join()
        if self._own_client:
            self.http_client.close()
        if self._own_engine:
            self.engine.dispose()


def insert_steps() -> Any:
    return insert(oplog_steps)


