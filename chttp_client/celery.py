"""Celery tasks whose certified sends are exactly-once across redelivery, retries and kills.

::

    from chttp_client import Journal
    from chttp_client.celery import resumable_task

    journal = Journal("postgresql://…/payouts", lease=timedelta(seconds=30))

    @resumable_task(app, journal, bind=True)
    def pay(self, payee_url, amount, *, chttp_context):
        response = chttp_context.post(payee_url, json={"amount": amount})
        return response.json()["payment"]

    pay.delay("https://bank.example/payments", 10)

A task declared this way is a resumable function (:mod:`chttp_client.resumable`) whose
oplog id **is the Celery task id** (its function is ``celery:<task name>``, so
``chttp-client list`` / ``show <task id>`` find it). Every delivery of one task id —
the first, a redelivery after a worker was SIGKILLed (``acks_late`` +
``task_reject_on_worker_lost``), a ``self.retry()``, a manual re-run with
``apply_async(args, task_id=…)`` — runs the same oplog: recorded steps are replayed
(same message ids, same persisted values, same answers) and only what is missing
runs. A task id whose oplog finished returns its recorded result (or raises its
recorded error) and sends nothing. The task is acknowledged only after that.

Defaults that differ from Celery's, and why:

* ``acks_late=True`` and ``reject_on_worker_lost=True``: a task whose worker dies is
  delivered again, and the journal makes that safe. ``acks_late=False`` (or
  ``reject_on_worker_lost=False``) is refused with :class:`TaskConfigurationError`:
  a lost task would leave its oplog open for ever with nothing to finish it.
* ``max_retries=None``: a retry can never send twice, and the send's own deadline
  (``RetryPolicy.deadline``, recorded, final) already bounds how long a task retries.

**Duplicate deliveries** (a redelivery after ``visibility_timeout`` while the first
delivery still runs, or a task id sent twice): the oplog's lease lets one run at a
time. The other delivery *waits*, polling the oplog, for up to ``busy_wait`` (default
30 s): if the running delivery finishes, the duplicate returns its recorded result; if
the lease becomes free (its holder died: a process of this host that no longer
exists, or a lease expired by the database's clock), the duplicate takes the oplog over
and resumes it. If ``busy_wait`` passes first, the duplicate is rejected with
``requeue=True`` and comes back later; it is never acknowledged as done while the
task's outcome is unknown.

**Waiting for answers**: one delivery waits at most ``send_deadline`` (default 60 s)
for a send's answer (the receiver down or answering 503). Past it the send raises
:class:`~chttp_client.errors.RunDeadlineExceeded`, *not recorded*; if the body lets it
propagate the task is retried (``self.retry``, ``default_retry_delay``) and the retry
resends the same message id. A body may also call ``self.retry()`` itself: Celery's
``Retry`` is never recorded as the function's outcome, the records gathered so far are
committed, and the lease is released for the retry. Once the send's *own* deadline
passes, its :class:`~chttp_client.errors.DeadlineExceeded` is recorded and replayed to
every later delivery: the task fails.

The journal unreachable (a database disconnect, before the body or in it) is not
recorded either: the task is retried through Celery. Not recorded, and the oplog stays
open: Celery's ``SoftTimeLimitExceeded``
(the task fails in Celery; re-run the task id to finish the oplog). An oplog
abandoned (``Journal.abandon``, or more than the journal's ``max_resume_attempts``
redeliveries in a row that committed nothing: a task that kills its worker every time)
fails every later delivery with :class:`~chttp_client.errors.OplogAbandonedError`;
its recorded but unanswered sends are not resent.

``resume_all()`` skips these oplogs: Celery's redelivery drives them. The journal's
connection pool is disposed in each prefork child (``worker_process_init``), so no
connection opened before the fork is shared. docs/celery.rst has the timing rules
(``visibility_timeout``, lease, ``send_deadline``), measured.

::

    ChttpClientError
    └── CeleryTaskError            chttp_client.celery's own errors
        ├── TaskConfigurationError a resumable task declared in a way that loses tasks
        └── TaskIdReusedError      a task id delivered with other arguments or task
"""

from __future__ import annotations

import inspect
import threading
import time
import weakref
from datetime import timedelta
from typing import Any, Callable

from celery import Celery, Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from celery.signals import worker_process_init
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from chttp_client import codec
from chttp_client.context import ResumableContext
from chttp_client.errors import (
    ChttpClientError,
    OplogAbandonedError,
    OplogBusyError,
    RunDeadlineExceeded,
    UnknownFunctionError,
)
from chttp_client.journal import Journal
from chttp_client.leases import new_owner
from chttp_client.records import CELERY_PREFIX, OplogInfo
from chttp_core.db import is_disconnect
from chttp_core.schema import OPLOG_OPEN

__all__ = [
    "resumable_task",
    "ResumableTask",
    "CeleryTaskError",
    "TaskConfigurationError",
    "TaskIdReusedError",
    "RunDeadlineExceeded",
    "SEND_DEADLINE",
    "BUSY_WAIT",
]

#: How long one delivery waits for a send's answer before retrying the task.
SEND_DEADLINE = timedelta(seconds=60)
#: How long a duplicate delivery waits for the running one before it is requeued.
BUSY_WAIT = timedelta(seconds=30)
#: How often a waiting duplicate looks at the oplog again, in seconds.
_BUSY_POLL = 0.2


class CeleryTaskError(ChttpClientError):
    """Root of :mod:`chttp_client.celery`'s own errors."""


class TaskConfigurationError(CeleryTaskError, ValueError):
    """A resumable task declared in a way that could lose or duplicate work; raised at declaration."""


class TaskIdReusedError(CeleryTaskError):
    """A task id already journaled for another task or other arguments was delivered again.

    The oplog keeps what its first delivery was asked; running other arguments under
    the same id would replay answers that belong to another request.
    """

    def __init__(self, task_id: str, detail: str) -> None:
        super().__init__(task_id, detail)
        self.task_id = task_id
        self.detail = detail

    def __str__(self) -> str:
        return f"task id {self.task_id} was journaled {self.detail}; give a new task a new id"


class _Detached(BaseException):
    """Carries an exception out of ``ResumableContext.call`` without it being recorded.

    A ``BaseException``, so that the context's ``except Exception`` lets it through.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


#: Raised by a body, these end the delivery but not the function: never recorded.
_NOT_AN_OUTCOME = (Retry, RunDeadlineExceeded, SoftTimeLimitExceeded)

_JOURNALS: weakref.WeakSet[Journal] = weakref.WeakSet()
_JOURNALS_LOCK = threading.Lock()


def _dispose_after_fork(**_: Any) -> None:
    """A prefork child must not use connections its parent opened before the fork."""
    with _JOURNALS_LOCK:
        journals = list(_JOURNALS)
    for journal in journals:
        journal.engine.dispose(close=False)


worker_process_init.connect(_dispose_after_fork, weak=False)


class ResumableTask(Task):  # type: ignore[misc]  # Celery ships no types: Task is Any
    """The base class :func:`resumable_task` declares tasks with (see the module docstring)."""

    acks_late = True
    reject_on_worker_lost = True
    max_retries = None
    #: Set by :func:`resumable_task`.
    journal: Journal
    chttp_name: str
    chttp_version: int
    chttp_function: Callable[..., Any]
    chttp_bind: bool = False
    send_deadline: timedelta | None = SEND_DEADLINE
    busy_wait: timedelta = BUSY_WAIT

    def chttp_deliver(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run this delivery of the task: a new oplog, a resumed one, or a recorded result.

        The journal unreachable (a database disconnect, here or in the body) retries the
        task through Celery (``default_retry_delay``): nothing was recorded that the
        retry could not redo, and acknowledging it as failed would leave its oplog open.
        """
        try:
            return self._deliver(args, kwargs)
        except Exception as error:
            if _unreachable(error):
                raise self.retry(exc=error) from None
            raise

    def _deliver(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        journal = self.journal
        journal.ensure_schema()
        task_id = self.request.id
        if task_id is None:
            raise CeleryTaskError("a resumable task needs a task id: call it through Celery "
                                  "(delay/apply_async/apply), not as a plain function")
        arguments = codec.dumps({"args": list(args), "kwargs": kwargs})
        # A first delivery does not look for an oplog (one read fewer per task): if one
        # exists after all (a re-run by hand, a duplicate), our first commit's insert
        # fails before anything left the process, and we join it below.
        again = bool(self.request.retries) or self._redelivered()
        info = journal.store.get(task_id) if again else None
        if info is None:
            owner = new_owner()
            try:
                return self._call(self._context(task_id, arguments, owner=owner), owner)
            except IntegrityError:
                # Another delivery of this id wrote the oplog first (nothing of ours
                # was sent: our first commit is the one that failed): join it.
                info = journal.store.get(task_id)
                if info is None:
                    raise
        self._check_same_task(info, arguments)
        return self._resume(info, arguments)

    # -- the parts -----------------------------------------------------------------------

    def _context(self, task_id: str, arguments: str, *, owner: str,
                 info: OplogInfo | None = None) -> ResumableContext:
        return ResumableContext(
            self.journal.services, oplog_id=task_id, function=self.chttp_name,
            version=self.chttp_version, arguments=arguments,
            recorded=info.steps if info is not None else (), stored=info is not None,
            owner=owner, run_deadline=self.send_deadline,
        )

    def _call(self, context: ResumableContext, owner: str) -> Any:
        body, bind = self.chttp_function, self.chttp_bind

        def function(*args: Any, **kwargs: Any) -> Any:
            try:
                return body(self, *args, **kwargs) if bind else body(*args, **kwargs)
            except _NOT_AN_OUTCOME as error:
                raise _Detached(error) from None
            except Exception as error:
                if _unreachable(error):  # not the function's outcome: a retry redoes it
                    raise _Detached(error) from None
                raise

        try:
            return context.call(function)
        except _Detached as detached:
            error = detached.error
        # What this run gathered is committed (persisted values, answers), and the
        # lease is free at once for the retry or redelivery.
        if _unreachable(error):
            try:  # best effort: else the retry takes the lease once it expires
                self.journal.store.release_lease(context.oplog_id, owner)
            except Exception:  # noqa: BLE001 - still unreachable
                pass
        else:
            context.flush()
            self.journal.store.release_lease(context.oplog_id, owner)
        if isinstance(error, RunDeadlineExceeded):
            raise self.retry(exc=error)
        raise error

    def _redelivered(self) -> bool:
        return bool((self.request.delivery_info or {}).get("redelivered"))

    def _check_same_task(self, info: OplogInfo, arguments: str) -> None:
        if info.function != self.chttp_name:
            raise TaskIdReusedError(info.id, f"for {info.function!r}, not {self.chttp_name!r}")
        if info.arguments != codec.loads(arguments):
            raise TaskIdReusedError(info.id, f"with arguments {info.arguments!r}")

    def _resume(self, info: OplogInfo, arguments: str) -> Any:
        """Lease and replay the oplog (waiting out a live holder), or return its record."""
        journal = self.journal
        redelivered = self._redelivered()
        give_up = time.monotonic() + self.busy_wait.total_seconds()
        owner = new_owner()
        while True:
            if info.state != OPLOG_OPEN:
                return journal.resume(info.id)  # the recorded result; nothing runs
            if info.version != self.chttp_version:
                # Written by another version of the body: only that code replays it.
                raise UnknownFunctionError(info.id, info.function, info.version,
                                           [self.chttp_version])
            try:
                attempts = journal.store.take_lease(info.id, owner, now=journal.clock(),
                                                    lease=journal.lease, count_attempt=redelivered)
            except OplogBusyError:
                if time.monotonic() > give_up:
                    raise Reject(f"oplog {info.id} is still run by another delivery", requeue=True)
                time.sleep(_BUSY_POLL)
            else:
                break
            fresh = journal.store.get(info.id)
            assert fresh is not None  # oplogs are only purged once finished
            info = fresh
        limit = journal.max_resume_attempts
        if limit is not None and attempts > limit:
            reason = f"{attempts - 1} redeliveries made no progress (max_resume_attempts={limit})"
            journal.abandon(info.id, reason)
            raise OplogAbandonedError(info.id, reason)
        # Re-read under our lease: the previous holder may have committed meanwhile.
        leased = journal.store.get(info.id)
        assert leased is not None
        return self._call(self._context(info.id, arguments, owner=owner, info=leased), owner)


def _unreachable(error: BaseException) -> bool:
    """A database that could not be reached (not a bad query, not the body's own error)."""
    return isinstance(error, (DBAPIError, DisconnectionError, SQLAlchemyTimeoutError)) \
        and is_disconnect(error)


def _task_signature(body: Callable[..., Any], bind: bool) -> inspect.Signature:
    """What Celery checks calls against: the body's, minus ``chttp_context``, plus ``self``."""
    signature = inspect.signature(body)
    parameters = list(signature.parameters.values())
    context = signature.parameters.get("chttp_context")
    if context is None or context.kind not in (inspect.Parameter.KEYWORD_ONLY,
                                               inspect.Parameter.POSITIONAL_OR_KEYWORD):
        raise TypeError(f"{body.__qualname__} must take a keyword argument chttp_context "
                        "(def task(..., *, chttp_context))")
    parameters.remove(context)
    if not bind:
        parameters.insert(0, inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY))
    return signature.replace(parameters=parameters)


def resumable_task(app: Celery, journal: Journal, *, version: int = 1, bind: bool = False,
                   send_deadline: timedelta | None = SEND_DEADLINE,
                   busy_wait: timedelta = BUSY_WAIT, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Declare ``body`` (taking keyword ``chttp_context``) a Celery task of ``app``.

    ``version``: bump it when the body's steps change; an open oplog written by another
    version fails its delivery with :class:`~chttp_client.errors.UnknownFunctionError`
    and stays open (one Celery task name has one body: let open oplogs finish before
    deploying a body that takes other steps); ``bind=True`` passes the task as the first argument (for ``self.retry()``,
    ``self.request``); ``send_deadline`` bounds one delivery's wait for an answer
    (None: only the send's own, recorded deadline); ``busy_wait`` bounds a duplicate
    delivery's wait for the running one. Every other keyword is Celery's
    (``name=``, ``queue=``, ``default_retry_delay=``, …).
    """
    if not isinstance(journal, Journal):
        raise TypeError("resumable_task needs a Journal: resumable_task(app, journal)")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError("version must be a positive int")
    for option in ("acks_late", "reject_on_worker_lost"):
        if options.get(option, True) is not True:
            raise TaskConfigurationError(
                f"{option}={options[option]!r}: a resumable task's message must stay unacknowledged "
                "until its oplog is finished, and come back if its worker dies; otherwise a "
                "killed worker leaves the oplog open with nothing to finish it (leave "
                f"{option} at its default, True)")
    if journal.engine.dialect.name == "sqlite" and journal.engine.url.database in (None, "", ":memory:"):
        raise TaskConfigurationError(
            "an in-memory SQLite journal is private to one process: every worker would keep "
            "its own oplogs and a redelivered task would run again; give the journal a file "
            "or a PostgreSQL URL")
    def decorate(body: Callable[..., Any]) -> Any:
        signature = _task_signature(body, bind)

        def run(task: ResumableTask, *args: Any, **kwargs: Any) -> Any:
            return task.chttp_deliver(args, kwargs)

        run.__name__ = body.__name__
        run.__qualname__ = body.__qualname__
        run.__module__ = body.__module__
        run.__doc__ = body.__doc__
        vars(run)["__signature__"] = signature
        celery_options = dict(options)
        name = celery_options.pop("name", None) or f"{body.__module__}.{body.__name__}"
        with _JOURNALS_LOCK:
            _JOURNALS.add(journal)
        return app.task(
            run, base=ResumableTask, bind=True, name=name, journal=journal,
            chttp_name=CELERY_PREFIX + name, chttp_version=version,
            chttp_function=staticmethod(body), chttp_bind=bind,
            send_deadline=send_deadline, busy_wait=busy_wait, **celery_options)

    return decorate
