"""How the journal's stored rows become records: strictly for a replay, tolerantly for a listing.

:class:`~chttp_client.oplog_store.OplogStore` runs the SQL; these functions turn its
rows into :mod:`chttp_client.records` and decide what an unreadable one means. A record
this code cannot read — not JSON, an unknown tag, a wrong shape
(:func:`~chttp_client.records.check_step`) — is a :class:`~chttp_client.codec.CodecError`
naming the oplog and the step when a run is about to replay it (``strict``), and an
``OplogInfo.unreadable`` when a listing or an operator reads it, so one bad row never
hides the others (:mod:`chttp_client.quarantine`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, overload

from sqlalchemy import Connection, select

from chttp_client import codec
from chttp_client.codec import CodecError
from chttp_client.records import (
    OPLOG_ABANDONED,
    OplogInfo,
    StepRecord,
    check_arguments,
    check_outcome,
    check_step,
)
from chttp_core.schema import oplog_steps, oplogs

__all__ = ["aware", "parse_or_none", "step_record", "step_values", "oplog_info", "readable_steps",
           "raw_rows"]


@overload
def aware(moment: datetime) -> datetime: ...


@overload
def aware(moment: None) -> None: ...


def aware(moment: datetime | None) -> datetime | None:
    """``moment`` as an aware UTC datetime (SQLite hands back naive ones)."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _json_or_none(value: Any) -> str | None:
    return json.dumps(value) if value is not None else None


def step_values(step: StepRecord) -> dict[str, Any]:
    """The column values of ``step``, as the store inserts or updates them."""
    return {
        "kind": step.kind, "name": step.name, "state": step.state,
        "outcome": _json_or_none(step.outcome),
        "message_id": step.message_id, "fingerprint": step.fingerprint,
        "request": _json_or_none(step.request),
        "first_sent_at": step.first_sent_at,
        "response": _json_or_none(step.response),
        "message_url": step.message_url, "attempts": step.attempts,
    }


def parse_or_none(text: str | None, where: str) -> Any:
    """A stored JSON column (tags left encoded); :class:`~chttp_client.codec.CodecError`
    naming ``where`` if it is not JSON."""
    return codec.parse(text, where=where) if text is not None else None


def step_record(row: Any) -> StepRecord:
    """The step of ``row``; :class:`CodecError` naming it if it cannot be replayed
    (undecodable, or of the wrong shape: :func:`~chttp_client.records.check_step`)."""
    where = f"oplog {row.oplog_id} step {row.number}"
    step = StepRecord(
        number=row.number, kind=row.kind, name=row.name, state=row.state,
        outcome=parse_or_none(row.outcome, where), message_id=row.message_id,
        fingerprint=row.fingerprint, request=parse_or_none(row.request, where),
        first_sent_at=aware(row.first_sent_at), response=parse_or_none(row.response, where),
        message_url=row.message_url, acknowledged_at=aware(row.acknowledged_at),
        attempts=row.attempts or 0,
    )
    check_step(step, where)
    return step


def oplog_info(row: Any, steps: tuple[StepRecord, ...] = (), *, strict: bool = True,
               unreadable: CodecError | None = None) -> OplogInfo:
    """The oplog of ``row``. An unreadable ``arguments``/``result`` raises :class:`CodecError`
    (``strict``), or is carried in ``OplogInfo.unreadable`` (listings: one bad row never
    hides the others)."""
    arguments = result = None
    try:
        arguments = codec.loads(row.arguments, where=f"oplog {row.id} arguments")
        check_arguments(arguments, f"oplog {row.id} arguments")
        result = parse_or_none(row.result, f"oplog {row.id} result")
        if result is not None:
            check_outcome(result, f"oplog {row.id} result")
    except CodecError as error:
        if strict:
            raise
        arguments, result, unreadable = None, None, unreadable or error
    return OplogInfo(
        id=row.id, function=row.function, version=row.version,
        state=OPLOG_ABANDONED if row.abandoned_reason is not None else row.state,
        arguments=arguments, result=result,
        lease_owner=row.lease_owner, created_at=aware(row.created_at), steps=steps,
        abandoned_reason=row.abandoned_reason, resume_attempts=row.resume_attempts or 0,
        unreadable=unreadable,
    )


def readable_steps(connection: Connection, oplog_id: str
                   ) -> tuple[tuple[StepRecord, ...], list[CodecError]]:
    """The steps of ``oplog_id`` that can be read, and the errors of those that cannot."""
    steps, errors = [], []
    rows = connection.execute(
        select(oplog_steps).where(oplog_steps.c.oplog_id == oplog_id)
        .order_by(oplog_steps.c.number))
    for row in rows:
        try:
            steps.append(step_record(row))
        except CodecError as error:
            errors.append(error)
    return tuple(steps), errors


def raw_rows(connection: Connection, oplog_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The oplog's row and its step rows as stored, undecoded; None if there is none."""
    row = connection.execute(select(oplogs).where(oplogs.c.id == oplog_id)).mappings().first()
    if row is None:
        return None
    steps = connection.execute(
        select(oplog_steps).where(oplog_steps.c.oplog_id == oplog_id)
        .order_by(oplog_steps.c.number)).mappings()
    return dict(row), [dict(step) for step in steps]
