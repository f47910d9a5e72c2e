"""The console's read-only queries over the sender's journal (``chttp_oplogs`` and steps).

Like :mod:`~chttp_server.console.queries` for the messages: SQLAlchemy Core on the
tables of :mod:`chttp_core.schema`, frozen dataclasses out. Records are shown as
stored; in particular a recorded exception stays JSON text: the console never rebuilds
it (rebuilding imports the module a record names, and the database is not trusted to
name modules).

An open oplog whose lease has lapsed is the "stuck" thing an operator looks for
(:attr:`OplogSummary.stalled`): no process is running it, so it waits for a resume
(docs/protocol.rst §5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, or_, select

from chttp_core.schema import KIND_SEND, OPLOG_DONE, OPLOG_FAILED, OPLOG_OPEN, oplog_steps, oplogs
from chttp_server.console.queries import PAGE_SIZE, aware, aware_not_null, paged

__all__ = [
    "OPLOG_STATES",
    "OplogSummary",
    "OplogFilter",
    "OplogRow",
    "StepRow",
    "OplogDetail",
    "oplog_summary",
    "search_oplogs",
    "get_oplog",
    "sends_of_message",
]

OPLOG_STATES = (OPLOG_OPEN, OPLOG_DONE, OPLOG_FAILED)

@dataclass(frozen=True)
class OplogSummary:
    """Counts by state; ``stalled`` open oplogs have no live lease: nobody is running them."""

    open: int
    done: int
    failed: int
    stalled: int
    oldest_open: OplogRow | None


@dataclass(frozen=True)
class OplogFilter:
    """A search: a substring of the oplog id or of the function name, a state, a page."""

    text: str = ""
    state: str = ""
    page: int = 1


@dataclass(frozen=True)
class OplogRow:
    id: str
    function: str
    version: int
    state: str
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime | None
    finished_at: datetime | None
    steps: int
    sends: int

    def lease_live(self, now: datetime) -> bool:
        return self.lease_owner is not None and self.lease_expires_at is not None \
            and self.lease_expires_at > now


@dataclass(frozen=True)
class StepRow:
    """One step, its JSON columns unpacked for display (never decoded into objects)."""

    number: int
    kind: str
    name: str
    state: str
    message_id: str | None
    method: str | None
    url: str | None
    first_sent_at: datetime | None
    status: int | None
    message_url: str | None
    acknowledged_at: datetime | None
    error_type: str | None
    error_message: str | None
    value: str | None


@dataclass(frozen=True)
class OplogDetail:
    row: OplogRow
    arguments: str
    result: str | None
    steps: list[StepRow]


def _step_count(*, sends_only: bool = False) -> Any:
    query = select(func.count()).where(oplog_steps.c.oplog_id == oplogs.c.id)
    if sends_only:
        query = query.where(oplog_steps.c.kind == KIND_SEND)
    return query.scalar_subquery()


_OPLOG_COLUMNS = (
    oplogs.c.id, oplogs.c.function, oplogs.c.version, oplogs.c.state, oplogs.c.lease_owner,
    oplogs.c.lease_expires_at, oplogs.c.created_at, oplogs.c.updated_at, oplogs.c.finished_at,
    oplogs.c.abandoned_reason, _step_count().label("steps"), _step_count(sends_only=True).label("sends"),
)


def _oplog_row(row: Any) -> OplogRow:
    return OplogRow(
        # An abandoned oplog is stored as failed with its reason (chttp_client.oplog_store).
        id=row.id, function=row.function, version=row.version,
        state="abandoned" if row.abandoned_reason else row.state,
        lease_owner=row.lease_owner, lease_expires_at=aware(row.lease_expires_at),
        created_at=aware_not_null(row.created_at), updated_at=aware(row.updated_at),
        finished_at=aware(row.finished_at), steps=int(row.steps), sends=int(row.sends),
    )


def _stalled(now: datetime) -> ColumnElement[bool]:
    return (oplogs.c.state == OPLOG_OPEN) & or_(
        oplogs.c.lease_expires_at.is_(None), oplogs.c.lease_expires_at <= now)


def oplog_summary(connection: Connection, now: datetime) -> OplogSummary:
    counts = {state: n for state, n in connection.execute(  # indexed: ix_chttp_oplogs_state
        select(oplogs.c.state, func.count()).group_by(oplogs.c.state))}
    stalled = connection.execute(
        select(func.count()).select_from(oplogs).where(_stalled(now))).scalar_one()
    oldest = connection.execute(
        select(*_OPLOG_COLUMNS).where(oplogs.c.state == OPLOG_OPEN)
        .order_by(oplogs.c.created_at, oplogs.c.id).limit(1)).first()
    return OplogSummary(
        open=int(counts.get(OPLOG_OPEN, 0)), done=int(counts.get(OPLOG_DONE, 0)),
        failed=int(counts.get(OPLOG_FAILED, 0)), stalled=int(stalled),
        oldest_open=_oplog_row(oldest) if oldest is not None else None,
    )


def search_oplogs(connection: Connection, search: OplogFilter, now: datetime, *,
                  page_size: int = PAGE_SIZE) -> tuple[list[OplogRow], int]:
    """One page of matching oplogs, newest first, and how many match in all.

    The state filter also takes ``stalled`` (open, no live lease).
    """
    conditions: list[ColumnElement[bool]] = []
    if search.text:
        conditions.append(or_(oplogs.c.id.contains(search.text, autoescape=True),
                              oplogs.c.function.contains(search.text, autoescape=True)))
    if search.state == "stalled":
        conditions.append(_stalled(now))
    elif search.state:
        conditions.append(oplogs.c.state == search.state)
    total = connection.execute(
        select(func.count()).select_from(oplogs).where(*conditions)).scalar_one()
    query = (select(*_OPLOG_COLUMNS).where(*conditions)
             .order_by(oplogs.c.created_at.desc(), oplogs.c.id))
    rows = connection.execute(paged(query, search.page, page_size))
    return [_oplog_row(row) for row in rows], int(total)


def get_oplog(connection: Connection, oplog_id: str) -> OplogDetail | None:
    row = connection.execute(
        select(*_OPLOG_COLUMNS, oplogs.c.arguments, oplogs.c.result)
        .where(oplogs.c.id == oplog_id)).first()
    if row is None:
        return None
    steps = connection.execute(
        select(oplog_steps).where(oplog_steps.c.oplog_id == oplog_id)
        .order_by(oplog_steps.c.number))
    return OplogDetail(row=_oplog_row(row), arguments=_pretty(row.arguments),
                       result=_pretty(row.result) if row.result is not None else None,
                       steps=[_step_row(step) for step in steps])


def sends_of_message(connection: Connection, message_id: str) -> list[tuple[str, int]]:
    """``(oplog id, step number)`` of every recorded send that used ``message_id``."""
    return [(row.oplog_id, row.number) for row in connection.execute(  # indexed by message_id
        select(oplog_steps.c.oplog_id, oplog_steps.c.number)
        .where(oplog_steps.c.message_id == message_id)
        .order_by(oplog_steps.c.oplog_id, oplog_steps.c.number).limit(20))]


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pretty(text: str) -> str:
    data = _loads(text)
    if isinstance(data, str):
        return data
    compact = json.dumps(data, ensure_ascii=False)
    return compact if len(compact) <= 100 else json.dumps(data, indent=2, ensure_ascii=False)


def _step_row(step: Any) -> StepRow:
    request = _loads(step.request)
    response = _loads(step.response)
    outcome = _loads(step.outcome)
    request = request if isinstance(request, dict) else {}
    response = response if isinstance(response, dict) else {}
    error = outcome.get("error") if isinstance(outcome, dict) else None
    error = error if isinstance(error, dict) else None
    value = None
    if isinstance(outcome, dict) and "value" in outcome:
        value = json.dumps(outcome["value"], ensure_ascii=False)
    status = response.get("status")
    return StepRow(
        number=step.number, kind=step.kind, name=step.name, state=step.state,
        message_id=step.message_id,
        method=str(request["method"]) if "method" in request else None,
        url=str(request["url"]) if "url" in request else None,
        first_sent_at=aware(step.first_sent_at),
        status=status if isinstance(status, int) else None,
        message_url=step.message_url, acknowledged_at=aware(step.acknowledged_at),
        error_type=str(error.get("type")) if error else None,
        error_message=str(error.get("message", "")) if error else None,
        value=value,
    )
