"""The history checker: what the clients saw against what the database holds at the end.

Input: every attempt the clients made (the JSON lines :mod:`.loadgen` writes), the
application's effect rows (``mh_effects``: one per committed handler run, each with the
nonce that run answered with), and the stored responses (``chttp_messages``). Output: a
:class:`Report`. The guarantees it checks (docs/protocol.rst §2, §5):

* **exactly once** — no message id has more than one effect row (``duplicates``);
* **no acknowledged answer lost** — every id a client got a 2xx for has exactly the
  effect row whose nonce that answer carried, and its stored response is that answer
  byte for byte (``lost``, ``stored_mismatch``);
* **replays are the first answer** — every 2xx for one id has the same body
  (``replay_mismatch``);
* **nothing left in doubt** — every id sent got a definitive answer (``unresolved``), and
  no effect exists for an id nobody sent (``orphans``).

It also measures how the load held: answers per second before, during and after a
fault, the longest stretch without any successful answer, and how long after a fault
(or its repair) the first fresh attempt succeeded.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from chttp_examples.multihost.loadgen import is_definitive

__all__ = ["Attempt", "Report", "check", "read_attempts", "read_database"]


@dataclass(frozen=True)
class Attempt:
    """One try of one message id through one receiver, as the client saw it."""

    message_id: str
    t0: float
    t1: float
    receiver: str = ""
    status: int | None = None
    body: str | None = None
    replayed: bool = False
    error: str | None = None
    request: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def read_attempts(paths: Iterable[Path]) -> tuple[list[Attempt], set[str]]:
    """The attempts in the history files, and the ids whose client gave up on them."""
    attempts: list[Attempt] = []
    gave_up: set[str] = set()
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if not line.endswith("}"):
                continue  # a line cut short by a killed client: that attempt saw nothing
            record = json.loads(line)
            if record.get("gave_up"):
                gave_up.add(record["id"])
                continue
            attempts.append(Attempt(
                message_id=record["id"], t0=record["t0"], t1=record["t1"],
                receiver=record.get("receiver", ""), status=record.get("status"),
                body=record.get("body"), replayed=bool(record.get("replayed")),
                error=record.get("error"), request=record.get("request"),
            ))
    return attempts, gave_up


def read_database(connection: Any) -> tuple[dict[str, list[str]], dict[str, tuple[int | None, bytes | None]]]:
    """``(effects, stored)`` from a DB-API connection to the application's database.

    ``effects`` maps each message id to the nonces of its effect rows; ``stored`` maps it
    to its stored response ``(status, body)``.
    """
    effects: dict[str, list[str]] = defaultdict(list)
    stored: dict[str, tuple[int | None, bytes | None]] = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT message_id, nonce FROM mh_effects ORDER BY id")
        for message_id, nonce in cursor.fetchall():
            effects[message_id].append(nonce)
        cursor.execute("SELECT message_id, status, body FROM chttp_messages")
        for message_id, status, body in cursor.fetchall():
            stored[message_id] = (status, bytes(body) if body is not None else None)
    return dict(effects), stored


@dataclass
class Report:
    """What :func:`check` found; :attr:`ok` is True when every guarantee held."""

    messages: int = 0
    answered: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    replays: int = 0
    duplicates: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    stored_mismatch: list[str] = field(default_factory=list)
    replay_mismatch: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    answer_times: list[float] = field(default_factory=list)
    attempt_spans: list[tuple[float, float, bool]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.lost or self.stored_mismatch
                    or self.replay_mismatch or self.unresolved or self.orphans)

    # -- load -------------------------------------------------------------------------

    def rate(self, start: float, end: float) -> float:
        """Messages answered (first 2xx) per second in ``[start, end)``."""
        if end <= start:
            return 0.0
        return sum(1 for t in self.answer_times if start <= t < end) / (end - start)

    def longest_gap(self, start: float, end: float | None = None) -> float:
        """The longest time within ``[start, end]`` in which no attempt succeeded."""
        end = self.end if end is None else end
        moments = [start] + [t for t in self.answer_times if start < t < end] + [end]
        return max(b - a for a, b in zip(moments, moments[1:]))

    def recovered_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` until an attempt *begun* after it succeeded (None: never)."""
        done = [t1 for t0, t1, ok in self.attempt_spans if ok and t0 >= moment]
        return min(done) - moment if done else None

    # -- text -------------------------------------------------------------------------

    def problems(self) -> dict[str, list[str]]:
        return {name: ids for name, ids in (
            ("duplicates", self.duplicates), ("lost", self.lost),
            ("stored_mismatch", self.stored_mismatch), ("replay_mismatch", self.replay_mismatch),
            ("unresolved", self.unresolved), ("orphans", self.orphans)) if ids}

    def summary(self) -> str:
        duration = max(self.end - self.start, 1e-9)
        lines = [
            f"messages {self.messages}, answered {self.answered}, attempts {self.attempts} "
            f"({self.failed_attempts} failed, {self.replays} replays), "
            f"{self.answered / duration:.1f} answers/s over {duration:.1f} s",
            f"duplicates {len(self.duplicates)}, lost answers {len(self.lost)}, "
            f"stored != answer {len(self.stored_mismatch)}, replay != first {len(self.replay_mismatch)}, "
            f"unresolved {len(self.unresolved)}, orphan effects {len(self.orphans)}",
        ]
        for name, ids in self.problems().items():
            lines.append(f"  {name}: {', '.join(sorted(ids)[:10])}{' …' if len(ids) > 10 else ''}")
        lines.append("history check: " + ("PASSED" if self.ok else "FAILED"))
        return "\n".join(lines)


def check(attempts: Sequence[Attempt], effects: Mapping[str, Sequence[str]],
          stored: Mapping[str, tuple[int | None, bytes | None]],
          gave_up: Iterable[str] = ()) -> Report:
    """Check a history against the database's final state (see the module docstring)."""
    report = Report()
    by_id: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in sorted(attempts, key=lambda a: a.t0):
        by_id[attempt.message_id].append(attempt)
    report.messages = len(by_id)
    report.attempts = len(attempts)
    if attempts:
        report.start = min(a.t0 for a in attempts)
        report.end = max(a.t1 for a in attempts)
    report.attempt_spans = [(a.t0, a.t1, a.succeeded) for a in attempts]
    for message_id, tries in by_id.items():
        rows = list(effects.get(message_id, ()))
        if len(rows) > 1:
            report.duplicates.append(message_id)
        report.failed_attempts += sum(1 for a in tries if a.status is None or a.status >= 500
                                      or a.status in (409, 429))
        report.replays += sum(1 for a in tries if a.replayed)
        definitive = [a for a in tries if a.status is not None and is_definitive(a.status)]
        if not definitive:
            report.unresolved.append(message_id)
            continue
        report.answered += 1
        successes = [a for a in tries if a.succeeded]
        if not successes:
            continue
        first = successes[0]
        report.answer_times.append(first.t1)
        if any(a.body != first.body for a in successes[1:]):
            report.replay_mismatch.append(message_id)
        nonce = _nonce(first.body)
        if nonce is None or nonce not in rows:
            report.lost.append(message_id)
        row = stored.get(message_id)
        if row is None or row[0] != first.status or (row[1] is not None and row[1].decode() != first.body):
            report.stored_mismatch.append(message_id)
    report.unresolved = sorted(set(report.unresolved) | (set(gave_up) - {
        m for m, tries in by_id.items() if any(a.status and is_definitive(a.status) for a in tries)}))
    report.orphans = sorted(set(effects) - set(by_id))
    report.answer_times.sort()
    return report


def _nonce(body: str | None) -> str | None:
    try:
        value = json.loads(body or "")
    except ValueError:
        return None
    return value.get("nonce") if isinstance(value, dict) else None
