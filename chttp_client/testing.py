"""Test helpers for resumable functions: crash at every step, resume, compare.

The seed asks for a way "to unit test that you actually got all the state you needed".
:func:`check_crash_resume` is that test::

    from chttp_client.testing import check_crash_resume

    def test_transfer_survives_crashes(receiver_url):
        check_crash_resume(start_transferring_foo, receiver_url, 5)

How it works
------------
1. **Reference run.** The function runs once, uncrashed. Its steps (persisted values,
   message ids, request bodies) and its outcome are the reference.
2. **Crash at every step.** For every step *k* and every point of it — right before it,
   right after it, and for a send also between "recorded" and "sent" and between
   "answered" and "recorded" — the function runs again as a new oplog and a simulated
   crash (a ``BaseException`` raised from a fault hook, which nothing records) stops
   it there. Whatever was not yet committed is lost, exactly as in a real
   crash. A send's answer is recorded by the oplog's *next* commit (the next send's
   intent commit or the finish, :mod:`chttp_client.context`), so a crash at a send's
   ``send-answered`` or ``after-step``, or at any step before that next commit, loses
   the answer and the resume must get it again from the receiver's replay; the next
   send's ``send-recorded`` is the point right after the commit that recorded it.
3. **Resume.** ``random`` is reseeded from the OS and the clock has moved on (a real
   restart has new randomness and time), then the oplog is resumed.
4. **Compare.** The resumed run must reach the reference outcome and send the reference
   sequence of message ids with the reference bodies.

To make runs comparable, the crashed runs are *scripted* by the reference: a new step
takes the reference run's persisted value and message id, and must ask for the same
kind, name, method, URL, body and request headers. So a correct function resends the reference ids with
the reference bodies (the receiver answers from its store, its handler does not run
again), while a function that forgot to persist a value — ``random()`` in a body, the
time in a URL — diverges and is reported as
:class:`~chttp_client.errors.NonDeterminismError` naming the step. Acknowledgements are
off during the check, so that resent reference ids are answered rather than 410.

The receiver must be real: an ``httpx.WSGITransport`` around a ``CertifiedMiddleware``
app, or a live server.

Both the crashes and the scripting hook into a run from outside, as
:class:`~chttp_client.observers.StepObserver` subscribers of the journal's store; the
production classes carry no test attributes. :func:`set_fault_hook` gives tests the
same seam: a function called with every :class:`~chttp_client.observers.StepEvent` of a
journal's runs, which may raise (or kill the process) to simulate a crash there.
"""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from chttp_client import codec, observers
from chttp_client.errors import NonDeterminismError
from chttp_client.journal import Journal
from chttp_client.observers import StepEvent, StepObserver
from chttp_client.records import StepRecord
from chttp_core.schema import KIND_SEND

__all__ = [
    "check_crash_resume",
    "CrashResumeReport",
    "CrashCase",
    "CrashResumeFailure",
    "SimulatedCrash",
    "set_fault_hook",
    "get_fault_hook",
    "expire_leases",
]

FaultHook = Callable[[StepEvent], None]


class _HookObserver(StepObserver):
    def __init__(self, hook: FaultHook) -> None:
        self.hook = hook

    def on_event(self, event: StepEvent) -> None:
        self.hook(event)


_HOOKS: weakref.WeakKeyDictionary[Any, _HookObserver] = weakref.WeakKeyDictionary()
_HOOKS_LOCK = threading.Lock()


def set_fault_hook(journal: Journal, hook: FaultHook | None) -> None:
    """Call ``hook`` with every :class:`StepEvent` of ``journal``'s runs (None: stop).

    One hook per journal: setting another replaces it. A hook raises (a
    ``BaseException`` such as :class:`SimulatedCrash`) or kills the process to stop a
    run at that point, exactly where a crash would.
    """
    with _HOOKS_LOCK:
        previous = _HOOKS.pop(journal.store, None)
        if previous is not None:
            observers.unsubscribe(journal.store, previous)
        if hook is not None:
            observer = _HOOKS[journal.store] = _HookObserver(hook)
            observers.subscribe(journal.store, observer)


def get_fault_hook(journal: Journal) -> FaultHook | None:
    """The hook :func:`set_fault_hook` installed on ``journal``, if any."""
    with _HOOKS_LOCK:
        observer = _HOOKS.get(journal.store)
    return observer.hook if observer is not None else None


def expire_leases(journal: Journal, oplog_id: str | None = None) -> int:
    """Let lease time pass for ``oplog_id`` (or every open oplog) without waiting for it.

    A lease runs out by the *database's* clock, which ``Journal(clock=…)`` does not
    move (:mod:`chttp_client.leases`); this ends the leases and acknowledgement claims
    there instead (:meth:`OplogStore.expire_leases
    <chttp_client.oplog_store.OplogStore.expire_leases>`), owners kept, so another
    journal may take the oplog over exactly as after a real expiry. Returns how many
    leases were ended.
    """
    journal.ensure_schema()
    return journal.store.expire_leases(oplog_id)


class _Script(StepObserver):
    """New steps of one oplog must match the reference run, and reuse its values and ids."""

    def __init__(self, oplog_id: str, reference: Sequence[StepRecord]) -> None:
        self.oplog_id = oplog_id
        self.reference = list(reference)

    def scripted_step(self, oplog_id: str, proposed: StepRecord) -> StepRecord | None:
        if oplog_id != self.oplog_id:
            return None
        number = proposed.number
        if number > len(self.reference):
            expected = "no step (the reference run ended here)"
        else:
            reference = self.reference[number - 1]
            if reference.matches(proposed):
                return reference
            expected = reference.describe_against(proposed)
            return self._refuse(oplog_id, number, expected, proposed.describe_against(reference))
        return self._refuse(oplog_id, number, expected, proposed.describe())

    @staticmethod
    def _refuse(oplog_id: str, number: int, expected: str, got: str) -> StepRecord:
        raise NonDeterminismError(oplog_id, number, f"{expected} in the reference run", got)


class SimulatedCrash(BaseException):
    """Raised by the helper's fault hook: a ``BaseException``, so no code records it."""


@dataclass
class CrashCase:
    """One crash point and what resuming from it did."""

    step: int
    point: str
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def __str__(self) -> str:
        return f"crash at {self.point} of step {self.step}: {self.problem or 'ok'}"


@dataclass
class CrashResumeReport:
    """The reference run and every crash case."""

    steps: list[StepRecord]
    outcome: dict[str, Any]
    cases: list[CrashCase] = field(default_factory=list)

    @property
    def failures(self) -> list[CrashCase]:
        return [case for case in self.cases if not case.ok]


class CrashResumeFailure(AssertionError):
    """A resumable function did not survive a crash; names the first diverging step."""

    def __init__(self, report: CrashResumeReport) -> None:
        self.report = report
        first = report.failures[0]
        lines = [f"{len(report.failures)} of {len(report.cases)} crash points failed; first: {first}"]
        lines += [f"  {case}" for case in report.failures[1:10]]
        super().__init__("\n".join(lines))
        self.step = first.step


def _outcome(journal: Journal, oplog_id: str) -> dict[str, Any]:
    return journal.get(oplog_id).result or {}


def _sends(steps: list[StepRecord] | tuple[StepRecord, ...]) -> list[tuple[int, str | None, str | None]]:
    return [(s.number, s.message_id, s.fingerprint) for s in steps if s.kind == KIND_SEND]


def _same_outcome(left: dict[str, Any], right: dict[str, Any]) -> bool:
    if "error" in left or "error" in right:
        a, b = left.get("error") or {}, right.get("error") or {}
        return (a.get("type"), a.get("args")) == (b.get("type"), b.get("args"))
    return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)


def _run(journal: Journal, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
         oplog_id: str, script: Sequence[StepRecord] | None = None) -> None:
    scripted = _Script(oplog_id, script) if script is not None else None
    if scripted is not None:
        observers.subscribe(journal.store, scripted)
    try:
        journal.run(function.chttp_name, function.chttp_version, function.chttp_function,
                    args, kwargs, oplog_id=oplog_id)
    except NonDeterminismError:
        raise
    except Exception:  # noqa: BLE001 - the outcome is recorded in the oplog
        pass
    finally:
        if scripted is not None:
            observers.unsubscribe(journal.store, scripted)


def _resume(journal: Journal, oplog_id: str, script: Sequence[StepRecord]) -> None:
    scripted = _Script(oplog_id, script)
    observers.subscribe(journal.store, scripted)
    try:
        journal.resume(oplog_id, force=True)
    finally:
        observers.unsubscribe(journal.store, scripted)


def check_crash_resume(function: Callable[..., Any], *args: Any,
                       raise_on_failure: bool = True, **kwargs: Any) -> CrashResumeReport:
    """Crash ``function(*args, **kwargs)`` at every step, resume it, compare (module doc).

    ``function`` is a ``@resumable`` function. Raises :class:`CrashResumeFailure`
    (an ``AssertionError``) naming the first failing step, unless ``raise_on_failure``
    is false; returns the report.
    """
    journal = getattr(function, "journal", None)
    if not isinstance(journal, Journal) or not hasattr(function, "chttp_function"):
        raise TypeError("check_crash_resume needs a @resumable function")
    saved_hook, saved_ack = get_fault_hook(journal), journal.acknowledge
    journal.acknowledge = False
    try:
        return _check(journal, function, args, kwargs, raise_on_failure)
    finally:
        set_fault_hook(journal, saved_hook)
        journal.acknowledge = saved_ack


def _check(journal: Journal, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
           raise_on_failure: bool) -> CrashResumeReport:
    set_fault_hook(journal, None)
    reference_id = str(uuid.uuid4())
    _run(journal, function, args, kwargs, oplog_id=reference_id)
    reference = list(journal.get(reference_id).steps)
    report = CrashResumeReport(reference, _outcome(journal, reference_id))
    reference_ids = {s.message_id for s in reference if s.message_id is not None}

    for step in reference:
        points = ["before-step"]
        if step.kind == KIND_SEND:
            points += ["send-recorded", "send-answered"]
        points.append("after-step")
        for point in points:
            report.cases.append(_crash_case(journal, function, args, kwargs, reference,
                                            reference_ids, report.outcome, step.number, point))
    if raise_on_failure and report.failures:
        raise CrashResumeFailure(report)
    return report


def _crash_case(journal: Journal, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                reference: list[StepRecord], reference_ids: set[str],
                reference_outcome: dict[str, Any], number: int, point: str) -> CrashCase:
    case = CrashCase(number, point)
    attempted: list[str | None] = []

    def hook(event: StepEvent) -> None:
        if event.point == "send-attempt":
            attempted.append(event.message_id)
        if event.point == point and event.step == number:
            raise SimulatedCrash(point, number)

    oplog_id = str(uuid.uuid4())
    set_fault_hook(journal, hook)
    try:
        _run(journal, function, args, kwargs, oplog_id=oplog_id, script=reference)
    except SimulatedCrash:
        pass
    except NonDeterminismError as error:
        case.problem = f"the run before the crash already diverged from the reference run: {error}"
        case.step = error.step
        return case
    else:
        case.problem = "the crash point was never reached: the run took other steps than the reference run"
        return case
    finally:
        set_fault_hook(journal, None)

    # A restart: new randomness (and the clock has moved on).
    random.seed(os.urandom(16))
    set_fault_hook(journal, lambda event: attempted.append(event.message_id)
                   if event.point == "send-attempt" else None)
    try:
        journal.get(oplog_id)
    except Exception:  # nothing was committed before the crash
        set_fault_hook(journal, None)
        if attempted:
            case.problem = f"messages {attempted} left the process without a durable record"
        return case
    try:
        _resume(journal, oplog_id, reference)
    except NonDeterminismError as error:
        case.problem = f"resuming diverged: {error}"
        case.step = error.step
        return case
    except Exception:  # noqa: BLE001 - the function's outcome, compared below
        pass
    finally:
        set_fault_hook(journal, None)
    resumed = journal.get(oplog_id)
    outcome = resumed.result or {}
    if _sends(resumed.steps) != _sends(reference):
        case.problem = (f"sent {_sends(resumed.steps)} (step, id, body digest), "
                        f"the reference run sent {_sends(reference)}")
    elif any(message_id not in reference_ids for message_id in attempted):
        case.problem = f"attempted message ids {attempted} not all in the reference run"
    elif not _same_outcome(outcome, reference_outcome):
        case.problem = (f"outcome {codec.decode(outcome)!r} differs from the reference "
                        f"outcome {codec.decode(reference_outcome)!r}")
    return case
