"""Small server-rendered SVG bar charts for the dashboard: no JavaScript, no library.

Each chart is an <svg role="img"> named by its <title> and described by its <desc>; the
page puts the same numbers in a table beside it. Colours come from classes styled in
static/css/insight.css (the Content-Security-Policy forbids inline styles).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH = 640
BAR_AREA = 180
TOP = 12
LABEL_ROOM = 40
_ids = count(1)


@dataclass(frozen=True)
class Series:
    name: str
    css: str  # class of its bars, e.g. "chart-debit"
    values: list[float]


def _scale(total: float) -> float:
    return BAR_AREA / total if total > 0 else 0.0


def bar_chart(
    title: str, desc: str, labels: list[str], series: list[Series], *, stacked: bool = False
) -> SafeString:
    """Bars for each label: side by side per series, or stacked when `stacked`."""
    chart_id = f"chart-{next(_ids)}"
    groups = max(len(labels), 1)
    slot = WIDTH / groups
    if stacked:
        top = max((sum(s.values[i] for s in series) for i in range(len(labels))), default=0)
    else:
        top = max((v for s in series for v in s.values), default=0)
    scale = _scale(top)
    height = TOP + BAR_AREA + LABEL_ROOM
    parts = [
        format_html(
            '<svg class="chart" role="img" aria-labelledby="{0}-title {0}-desc" '
            'viewBox="0 0 {1} {2}" width="{1}" height="{2}" xmlns="http://www.w3.org/2000/svg">'
            '<title id="{0}-title">{3}</title><desc id="{0}-desc">{4}</desc>',
            chart_id,
            WIDTH,
            height,
            title,
            desc,
        ),
        format_html(
            '<line class="chart-axis" x1="0" y1="{0}" x2="{1}" y2="{0}" />',
            TOP + BAR_AREA,
            WIDTH,
        ),
    ]
    if top > 0:
        # One gridline at the tallest bar, labelled, so the bars have a scale.
        parts.append(
            format_html(
                '<line class="chart-grid" x1="0" y1="{0}" x2="{1}" y2="{0}" />'
                '<text class="chart-label" x="{1}" y="{2}" text-anchor="end">{3}</text>',
                TOP,
                WIDTH,
                TOP - 2,
                f"{top:g}",
            )
        )
    bar_width = slot * 0.7 / (1 if stacked else max(len(series), 1))
    for index, label in enumerate(labels):
        left = index * slot + slot * 0.15
        base = TOP + BAR_AREA
        for position, one in enumerate(series):
            value = one.values[index]
            bar = value * scale
            x = left if stacked else left + position * bar_width
            y = base - bar
            parts.append(
                format_html(
                    '<rect class="{}" x="{}" y="{}" width="{}" height="{}">'
                    "<title>{}: {} {}</title></rect>",
                    one.css,
                    f"{x:.1f}",
                    f"{y:.1f}",
                    f"{bar_width:.1f}",
                    f"{bar:.1f}",
                    label,
                    f"{value:g}",
                    one.name,
                )
            )
            if stacked:
                base = y
        # Every label when they fit; otherwise about a dozen, so they never overlap.
        step = max(1, -(-len(labels) // 12))
        if index % step == 0:
            parts.append(
                format_html(
                    '<text class="chart-label" x="{}" y="{}" text-anchor="middle">{}</text>',
                    f"{index * slot + slot / 2:.1f}",
                    TOP + BAR_AREA + 16,
                    label,
                )
            )
    legend_x = 0
    for one in series:
        parts.append(
            format_html(
                '<rect class="{}" x="{}" y="{}" width="10" height="10" />'
                '<text class="chart-label" x="{}" y="{}">{}</text>',
                one.css,
                legend_x,
                height - 12,
                legend_x + 14,
                height - 3,
                one.name,
            )
        )
        legend_x += 14 + 8 * len(one.name) + 16
    parts.append(mark_safe("</svg>"))
    return mark_safe("".join(str(part) for part in parts))
