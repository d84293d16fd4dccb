"""Charts for the console as inline SVG, drawn on the server.

Every chart here is bars or one line: a few dozen SVG elements each, readable without
JavaScript, scaled by the browser, and styled by console.css (colours are classes, so the
page's Content-Security-Policy can forbid inline styles). Each chart carries a title and a
description for screen readers; the pages put the same numbers in a table next to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

WIDTH = 640
LABEL_WIDTH = 210  # "opportunity → customer" at 14 px, with room
ROW_HEIGHT = 26
BAR_HEIGHT = 18


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _frame(chart_id: str, title: str, summary: str, height: int, body: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" preserveAspectRatio="xMinYMin meet">'
        f'<title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(summary)}</desc>' + "".join(body) + "</svg>"
    )


def bar_chart(
    chart_id: str,
    title: str,
    bars: Sequence[tuple[str, float]],
    *,
    unit: str = "",
    shown: Callable[[float], str] | None = None,
) -> Markup:
    """Horizontal bars, one per (label, value); negative values extend left of the zero line
    (a careers-page visit takes points away). `shown` writes a value as the page's tables do
    (a duration in seconds as "39 h 11 min"), in place of the number and `unit`."""

    def said(value: float) -> str:
        return shown(value) if shown is not None else f"{_number(value)}{unit}"

    low = min([0.0, *(v for _, v in bars)])
    high = max([0.0, *(v for _, v in bars)])
    span = (high - low) or 1.0
    plot = WIDTH - LABEL_WIDTH - 100
    zero = LABEL_WIDTH + plot * (-low / span)
    height = max(len(bars), 1) * ROW_HEIGHT + 8
    body = []
    for row, (label, value) in enumerate(bars):
        y = 4 + row * ROW_HEIGHT
        width = plot * abs(value) / span
        x = zero - width if value < 0 else zero
        kind = "neg" if value < 0 else "pos"
        # A negative bar's value goes right of the zero line, clear of the row's label.
        text_x = x + width + 4 if value >= 0 else zero + 4
        body.append(
            f'<text class="label" x="{LABEL_WIDTH - 6}" y="{y + 13}" text-anchor="end">'
            f"{escape(label[:26])}</text>"
            f'<rect class="bar {kind}" x="{x:.1f}" y="{y}" width="{max(width, 1):.1f}" '
            f'height="{BAR_HEIGHT}"><title>{escape(label)}: {escape(said(value))}</title></rect>'
            f'<text class="value" x="{text_x:.1f}" y="{y + 13}">'
            f"{escape(said(value))}</text>"
        )
    body.append(f'<line class="axis" x1="{zero:.1f}" x2="{zero:.1f}" y1="0" y2="{height}"/>')
    summary = "; ".join(f"{label}: {said(value)}" for label, value in bars)
    return _frame(chart_id, title, summary or "no data", height, body)


def grouped_bar_chart(
    chart_id: str,
    title: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
) -> Markup:
    """Horizontal bars per category, one per series (leads per stage under two versions),
    with a legend."""
    high = max([1.0, *(v for _, values in series for v in values)])
    plot = WIDTH - LABEL_WIDTH - 100
    per_category = len(series) * (BAR_HEIGHT + 2) + 10
    legend = 24
    height = legend + max(len(categories), 1) * per_category
    body = []
    for index, (name, _) in enumerate(series):
        x = LABEL_WIDTH + index * 180
        body.append(
            f'<rect class="bar s{index}" x="{x}" y="4" width="14" height="14"/>'
            f'<text class="label" x="{x + 20}" y="16">{escape(name)}</text>'
        )
    for row, category in enumerate(categories):
        top = legend + row * per_category
        body.append(
            f'<text class="label" x="{LABEL_WIDTH - 6}" y="{top + BAR_HEIGHT}" '
            f'text-anchor="end">{escape(category)}</text>'
        )
        for index, (name, values) in enumerate(series):
            value = values[row]
            y = top + index * (BAR_HEIGHT + 2)
            width = plot * value / high
            body.append(
                f'<rect class="bar s{index}" x="{LABEL_WIDTH}" y="{y}" '
                f'width="{max(width, 1):.1f}" height="{BAR_HEIGHT}">'
                f"<title>{escape(category)}, {escape(name)}: {_number(value)}</title></rect>"
                f'<text class="value" x="{LABEL_WIDTH + width + 4:.1f}" y="{y + 13}">'
                f"{_number(value)}</text>"
            )
    summary = "; ".join(
        f"{category}: " + ", ".join(f"{name} {_number(values[row])}" for name, values in series)
        for row, category in enumerate(categories)
    )
    return _frame(chart_id, title, summary or "no data", height, body)


def line_chart(
    chart_id: str,
    title: str,
    points: Sequence[tuple[str, float]],
    *,
    marks: Sequence[tuple[int, str]] = (),
) -> Markup:
    """A line through (label, value) points in order (a score after each event), with the
    points where something happened (a stage change) marked and named."""
    height, left, right, top, bottom = 250, 56, 24, 30, 40
    values = [v for _, v in points] or [0.0]
    low, high = min(0.0, *values), max(1.0, *values)
    span = high - low
    step = (WIDTH - left - right) / max(len(points) - 1, 1)

    def x(i: int) -> float:
        return left + i * step

    def y(v: float) -> float:
        return top + (height - top - bottom) * (high - v) / span

    body = [
        f'<line class="axis" x1="{left}" x2="{WIDTH - right}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>',
        f'<text class="value" x="{left - 6}" y="{y(high) + 4:.1f}" text-anchor="end">'
        f"{_number(high)}</text>",
        f'<text class="value" x="{left - 6}" y="{y(low) + 4:.1f}" text-anchor="end">'
        f"{_number(low)}</text>",
    ]
    path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, (_, v) in enumerate(points))
    body.append(f'<polyline class="line" points="{path}"/>')
    marked = dict(marks)
    for i, (label, value) in enumerate(points):
        kind = "mark" if i in marked else "dot"
        note = f" ({marked[i]})" if i in marked else ""
        body.append(
            f'<circle class="{kind}" cx="{x(i):.1f}" cy="{y(value):.1f}" r="{5 if note else 3}">'
            f"<title>{escape(label)}: {_number(value)}{escape(note)}</title></circle>"
        )
        if note:
            body.append(
                f'<text class="value" x="{x(i):.1f}" y="{y(value) - 9:.1f}" '
                f'text-anchor="middle">{escape(marked[i])}</text>'
            )
    body.append(
        f'<text class="value" x="{left}" y="{height - 12}">{escape(points[0][0]) if points else ""}'
        f'</text><text class="value" x="{WIDTH - right}" y="{height - 12}" text-anchor="end">'
        f"{escape(points[-1][0]) if points else ''}</text>"
    )
    summary = ", ".join(f"{label}: {_number(value)}" for label, value in points)
    return _frame(chart_id, title, summary or "no data", height, body)
