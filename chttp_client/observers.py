"""Watching the steps of running oplogs from outside: events and scripted steps.

A tool that needs to see inside a run — the crash-every-step check of
:mod:`chttp_client.testing`, a demo's attempt log — subscribes a :class:`StepObserver`
to a journal's store (``subscribe(journal.store, observer)``). Production classes keep
no hook attributes: the context asks this registry, which is empty unless something
subscribed, so an unobserved run pays one dictionary lookup per event.

An observer is told a :class:`StepEvent` at each point of each step that really
executes (replayed steps report nothing), and may *script* new steps: return a recorded
step for the context to reuse (its persisted value, its message id) or raise
:class:`~chttp_client.errors.NonDeterminismError` when the step asked for differs.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

from chttp_client.records import StepRecord

__all__ = ["StepEvent", "StepObserver", "subscribe", "unsubscribe", "emit", "scripted_step"]


@dataclass(frozen=True)
class StepEvent:
    """What an observer is told at one point of one executed step.

    ``point`` is one of ``before-step``, ``send-recorded`` (intent commit done, nothing
    sent yet), ``send-attempt`` (one attempt about to leave), ``send-answered`` (the
    definitive answer is in memory, not yet buffered) and ``after-step`` (for a send: its
    answer is buffered, recorded by the oplog's next commit — which the *next* send's
    ``send-recorded`` follows). Only steps that really execute report events; replayed
    steps do not.
    """

    point: str
    oplog_id: str
    step: int
    kind: str
    name: str
    message_id: str | None = None
    body: bytes | None = None


class StepObserver:
    """Base class: override what you need; the defaults observe nothing."""

    def on_event(self, event: StepEvent) -> None:
        """Called at each point of each executed step; raising stops the run there."""

    def scripted_step(self, oplog_id: str, proposed: StepRecord) -> StepRecord | None:
        """A recorded step to reuse for the new step ``proposed`` of ``oplog_id``, or None.

        ``proposed`` carries the number, kind, name, fingerprint and (for a send) the
        request; raise :class:`~chttp_client.errors.NonDeterminismError` to refuse it.
        """
        return None


_LOCK = threading.Lock()
_OBSERVERS: weakref.WeakKeyDictionary[Any, tuple[StepObserver, ...]] = weakref.WeakKeyDictionary()


def subscribe(store: Any, observer: StepObserver) -> None:
    """Tell ``observer`` about every run whose oplogs live in ``store`` (a journal's store)."""
    with _LOCK:
        _OBSERVERS[store] = _OBSERVERS.get(store, ()) + (observer,)


def unsubscribe(store: Any, observer: StepObserver) -> None:
    """Undo :func:`subscribe` (no error if ``observer`` was not subscribed)."""
    with _LOCK:
        remaining = tuple(o for o in _OBSERVERS.get(store, ()) if o is not observer)
        if remaining:
            _OBSERVERS[store] = remaining
        else:
            _OBSERVERS.pop(store, None)


def emit(store: Any, event: StepEvent) -> None:
    """Tell every observer of ``store`` about ``event`` (the context calls this)."""
    for observer in _OBSERVERS.get(store, ()):
        observer.on_event(event)


def scripted_step(store: Any, oplog_id: str, proposed: StepRecord) -> StepRecord | None:
    """The first scripted record an observer of ``store`` offers for ``proposed``."""
    for observer in _OBSERVERS.get(store, ()):
        scripted = observer.scripted_step(oplog_id, proposed)
        if scripted is not None:
            return scripted
    return None
