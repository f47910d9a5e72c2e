"""Outcomes over time: counted in the database, drawn as stacked bars in inline SVG.

The counting is one ``GROUP BY`` per chart whose time bucket is a ``CASE`` over the
bucket bounds, passed as parameters: the same SQL on SQLite and PostgreSQL, without
date functions that differ between them. The drawing is plain geometry handed to a
template (``chart.html``), so the page needs no script and no image endpoint.

What a bar counts is what the tables keep: for the receiver, the messages received in
the bucket by what is stored now (answered 1xx–3xx, answered 4xx, or acknowledged,
whose status is dropped with the body: docs/protocol.rst §3); for the sender, the oplogs
started in the bucket by their state now (done, failed, still open).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, case, func, literal, select

from chttp_core.schema import (
    OPLOG_DONE,
    OPLOG_FAILED,
    OPLOG_OPEN,
    STATE_ACKNOWLEDGED,
    messages,
    oplogs,
)

__all__ = [
    "Window",
    "WINDOWS",
    "DEFAULT_WINDOW",
    "Series",
    "Histogram",
    "Bar",
    "Chart",
    "message_outcomes",
    "oplog_outcomes",
    "draw",
]


@dataclass(frozen=True)
class Window:
    """How far back a chart looks, in how many bars."""

    name: str
    span: timedelta
    buckets: int

    @property
    def step(self) -> timedelta:
        return self.span / self.buckets


WINDOWS = {window.name: window for window in (
    Window("10m", timedelta(minutes=10), 20),
    Window("1h", timedelta(hours=1), 12),
    Window("24h", timedelta(hours=24), 24),
    Window("7d", timedelta(days=7), 28),
)}
DEFAULT_WINDOW = WINDOWS["24h"]


@dataclass(frozen=True)
class Series:
    key: str      # also the CSS class of its bars
    label: str


MESSAGE_SERIES = (Series("ok", "answered 1xx–3xx"), Series("refused", "answered 4xx"),
                  Series("acknowledged", "acknowledged"))
OPLOG_SERIES = (Series("done", "done"), Series("failed", "failed"), Series("open", "open"))


@dataclass(frozen=True)
class Histogram:
    """``counts[i][series key]``: rows in bucket ``i``, which starts at ``start + i * step``."""

    start: datetime
    step: timedelta
    series: tuple[Series, ...]
    counts: list[dict[str, int]]

    @property
    def total(self) -> int:
        return sum(sum(bucket.values()) for bucket in self.counts)


def _histogram(connection: Connection, column: Column[Any], kind: ColumnElement[str],
               series: tuple[Series, ...], now: datetime, window: Window) -> Histogram:
    start = now - window.span
    bounds = [start + window.step * (i + 1) for i in range(window.buckets - 1)]
    if bounds:
        bucket: ColumnElement[int] = case(
            *((column < bound, i) for i, bound in enumerate(bounds)), else_=len(bounds))
    else:
        bucket = literal(0)
    counts: list[dict[str, int]] = [{s.key: 0 for s in series} for _ in range(window.buckets)]
    rows = connection.execute(
        select(bucket.label("bucket"), kind.label("kind"), func.count().label("n"))
        .where(column >= start)
        .group_by(bucket, kind))
    for row in rows:
        if row.kind in counts[row.bucket]:
            counts[row.bucket][row.kind] += int(row.n)
    return Histogram(start=start, step=window.step, series=series, counts=counts)


def message_outcomes(connection: Connection, now: datetime, window: Window) -> Histogram:
    kind = case((messages.c.state == STATE_ACKNOWLEDGED, "acknowledged"),
                (messages.c.status < 400, "ok"), else_="refused")
    return _histogram(connection, messages.c.received_at, kind, MESSAGE_SERIES, now, window)


def oplog_outcomes(connection: Connection, now: datetime, window: Window) -> Histogram:
    kind = case((oplogs.c.state == OPLOG_DONE, "done"), (oplogs.c.state == OPLOG_FAILED, "failed"),
                (oplogs.c.state == OPLOG_OPEN, "open"), else_="other")
    return _histogram(connection, oplogs.c.created_at, kind, OPLOG_SERIES, now, window)


# -- drawing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str
    title: str


@dataclass(frozen=True)
class Chart:
    """What ``chart.html`` draws: bars in a ``width`` × ``height`` viewBox, and labels."""

    width: int
    height: int
    plot_height: int
    bars: list[Bar]
    series: tuple[Series, ...]
    peak: int
    total: int
    first_label: str
    last_label: str


def draw(histogram: Histogram, *, width: int = 600, height: int = 140) -> Chart:
    """Stack each bucket's series into bars scaled to the busiest bucket."""
    plot_height = height - 20  # room for the time labels below the bars
    peak = max((sum(bucket.values()) for bucket in histogram.counts), default=0)
    slot = width / max(len(histogram.counts), 1)
    bars: list[Bar] = []
    for index, bucket in enumerate(histogram.counts):
        begins = histogram.start + histogram.step * index
        base = float(plot_height)
        for series in histogram.series:
            count = bucket.get(series.key, 0)
            if not count:
                continue
            size = plot_height * count / peak
            base -= size
            bars.append(Bar(
                x=round(index * slot + 1, 2), y=round(base, 2), width=round(max(slot - 2, 1), 2),
                height=round(size, 2), series=series.key,
                title=f"{begins:%Y-%m-%d %H:%M} UTC: {count} {series.label}",
            ))
    end = histogram.start + histogram.step * len(histogram.counts)
    return Chart(width=width, height=height, plot_height=plot_height, bars=bars,
                 series=histogram.series, peak=peak, total=histogram.total,
                 first_label=f"{histogram.start:%Y-%m-%d %H:%M}",
                 last_label=f"{end:%Y-%m-%d %H:%M} UTC")
