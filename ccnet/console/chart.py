"""Result series as SVG charts (pure): which results are a series, and their chart.

A series is a result with a time column (``time``, else ``start``) and at least one
numeric column (``delay.twoway.icmp.us``, tstat's flow counts). Charts are drawn by
pygal (docs/console.md says why a library rather than hand-drawn SVG). pygal always
embeds a small configuration ``<script>`` in its SVG: the console serves the chart as an
``<img>`` (an SVG image never runs scripts) under a ``script-src 'none'`` policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pygal
from pygal.style import CleanStyle

from ccnet.mplane.model import Envelope, Message, ModelError, Statement, parse_time

__all__ = ["MAX_POINTS", "Series", "result_rows", "series_of", "svg_chart"]

TIME_COLUMNS = ("time", "start")
#: Points drawn at most in one chart, shared by its lines (longer series are thinned
#: evenly): a component chooses how many numeric columns and rows a result has, and
#: drawing time and SVG size grow with the points.
MAX_POINTS = 2000
X_LABELS = 6


@dataclass(frozen=True)
class Series:
    time_column: str
    #: column name -> [(time, value)], in row order
    lines: dict[str, list[tuple[datetime, float]]]


def result_rows(reply: Message | None) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of a result, or of every result of a multi-job envelope."""
    if isinstance(reply, Statement) and reply.kind == "result":
        return list(reply.results), [list(r) for r in reply.resultvalues]
    if isinstance(reply, Envelope):
        columns: list[str] = []
        rows: list[list[Any]] = []
        for item in reply.contents:
            cols, more = result_rows(item)
            if cols and (not columns or cols == columns):
                columns = cols
                rows.extend(more)
        return columns, rows
    return [], []


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _time(value: Any) -> datetime | None:
    try:
        t = parse_time(str(value))
    except ModelError:
        return None
    return t if isinstance(t, datetime) else None


def series_of(columns: list[str], rows: list[list[Any]]) -> Series | None:
    """The series in a result table, or None when it has no time or no numeric column."""
    tcol = next((c for c in TIME_COLUMNS if c in columns), None)
    if tcol is None or not rows:
        return None
    ti = columns.index(tcol)
    times = [_time(r[ti]) if ti < len(r) else None for r in rows]
    lines: dict[str, list[tuple[datetime, float]]] = {}
    for ci, name in enumerate(columns):
        if name in TIME_COLUMNS:
            continue
        values = [_number(r[ci]) if ci < len(r) else None for r in rows]
        # inf and nan are numbers, but no point on a chart.
        points = [(t, v) for t, v in zip(times, values, strict=True)
                  if t is not None and v is not None and math.isfinite(v)]
        # A column is numeric when every value it has is a number (addresses are not).
        if points and all(v is not None for v in values):
            lines[name] = points
    return Series(tcol, lines) if lines else None


def svg_chart(series: Series, title: str, width: int = 960, height: int = 360) -> str:
    """The series as one SVG document (a line per numeric column, time on the x axis).
    CPU work (up to a second for MAX_POINTS): the console runs it off the reactor."""
    chart = pygal.DateTimeLine(
        js=[], width=width, height=height, explicit_size=True, style=CleanStyle,
        x_label_rotation=20, show_dots=True, dots_size=2, legend_at_bottom=True,
        truncate_legend=40, x_value_formatter=lambda t: t.strftime("%H:%M:%S"))
    chart.title = title  # pygal escapes text it writes into the SVG
    times = [t for points in series.lines.values() for t, _ in points]
    first, last = min(times), max(times)
    # A few evenly spaced time labels (pygal's own choice crowds short series).
    chart.x_labels = [first + (last - first) * i / (X_LABELS - 1) for i in range(X_LABELS)] if last > first else [first]
    per_line = max(1, MAX_POINTS // len(series.lines))
    for name, points in series.lines.items():
        step = -(-len(points) // per_line)  # ceiling: at most per_line points
        chart.add(name, points[::step])
    return str(chart.render(is_unicode=True))
