"""
Server-rendered SVG charts for the admin, drawn from plain numbers.

A chart is a pure function of the numbers a selector returns: no JavaScript,
no chart library to serve, and the geometry is testable by parsing the SVG.
Every text that reaches the markup (dates, amounts, labels that may carry a
provider's scope names) goes through ``format_html``, so a hostile string
shows as text and never becomes markup.

Colours are presentation attributes, so a page may restyle them with CSS
through the classes; text uses ``currentColor`` and follows the admin's
light or dark theme.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

CENT = Decimal("0.01")

# Room around the plot for the y-axis labels (left), the marked day's label
# (top) and the first / last dates (bottom), in SVG units.
LEFT = 72
RIGHT = 8
TOP = 18
BOTTOM = 20
# The share of a day's slot its bar fills: a gap keeps 90 bars apart.
BAR_FILL = 0.8
BAR_COLOUR = "#79aec8"  # Django admin's primary blue
MARKED_COLOUR = "#ba2121"  # the admin's error red: the day the page is about
AXIS_COLOUR = "#999999"


def usd(amount: Decimal) -> str:
    """An amount of US dollars as people read money: ``$1,234.57``."""
    cents = Decimal(amount).quantize(CENT, rounding=ROUND_HALF_UP)
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents):,.2f}"


def _number(value: float) -> str:
    """An SVG coordinate: two decimals at most, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def daily_cost_chart(
    points: Sequence[tuple[date, Decimal]],
    *,
    marked: date | None = None,
    width: int = 720,
    height: int = 180,
    label: str = "Daily cost",
) -> SafeString:
    """
    A bar per day, tallest bar = the highest day, labelled with it as money.

    ``points`` are (day, cost) in the order to draw them, one per day
    (selectors zero-fill missing days). The ``marked`` day is drawn in a
    distinct class and colour with a label above it. Each day has a
    ``<title>`` ("2026-11-20: $12.34") over its whole column, so hovering
    works on zero days too. ``label`` starts the accessible summary.
    """
    if not points:
        return format_html(
            '<svg xmlns="http://www.w3.org/2000/svg" class="cost-chart empty" '
            'role="img" aria-label="{}: no data" width="{}" height="{}" '
            'viewBox="0 0 {} {}" style="max-width:100%;height:auto">'
            '<text x="{}" y="{}" text-anchor="middle" fill="currentColor">'
            "No data</text></svg>",
            label,
            width,
            height,
            width,
            height,
            _number(width / 2),
            _number(height / 2),
        )

    plot_width = width - LEFT - RIGHT
    plot_height = height - TOP - BOTTOM
    baseline = TOP + plot_height
    highest = max(cost for _, cost in points)
    scale = plot_height / float(highest) if highest > 0 else 0.0
    slot = plot_width / len(points)
    bar_width = max(slot * BAR_FILL, 1.0)

    columns = []
    marked_label = ""
    for index, (day, cost) in enumerate(points):
        x = LEFT + index * slot
        bar_height = max(float(cost), 0.0) * scale
        is_marked = day == marked
        columns.append(
            format_html(
                '<g class="day" data-date="{}" data-cost="{}">'
                "<title>{}: {}</title>"
                '<rect class="hit" x="{}" y="{}" width="{}" height="{}" '
                'fill="transparent"/>'
                '<rect class="{}" x="{}" y="{}" width="{}" height="{}" '
                'fill="{}"/></g>',
                day.isoformat(),
                f"{cost:f}",
                day.isoformat(),
                usd(cost),
                _number(x),
                TOP,
                _number(slot),
                plot_height,
                "bar marked" if is_marked else "bar",
                _number(x + (slot - bar_width) / 2),
                _number(baseline - bar_height),
                _number(bar_width),
                _number(bar_height),
                MARKED_COLOUR if is_marked else BAR_COLOUR,
            )
        )
        if is_marked:
            # Anchored towards the middle, so the label never leaves the chart.
            centre = x + slot / 2
            anchor = "middle"
            if centre < LEFT + plot_width / 4:
                anchor = "start"
            elif centre > LEFT + plot_width * 3 / 4:
                anchor = "end"
            marked_label = format_html(
                '<text class="marked-label" x="{}" y="{}" text-anchor="{}" '
                'font-size="11" fill="{}">{}: {}</text>',
                _number(centre),
                TOP - 5,
                anchor,
                MARKED_COLOUR,
                day.isoformat(),
                usd(cost),
            )

    first, last = points[0][0], points[-1][0]
    total = sum((cost for _, cost in points), Decimal(0))
    peak_day = next(day for day, cost in points if cost == highest)
    days = f"{len(points)} day{'s' if len(points) != 1 else ''}"
    summary = (
        f"{label}: {days} from {first.isoformat()} to "
        f"{last.isoformat()}, total {usd(total)}, highest {usd(highest)} "
        f"on {peak_day.isoformat()}"
    )
    if marked is not None:
        summary += f", marked {marked.isoformat()}"
    axis = format_html(
        '<line class="axis" x1="{left}" y1="{top}" x2="{right}" y2="{top}" '
        'stroke="{colour}" stroke-dasharray="2,3"/>'
        '<line class="axis" x1="{left}" y1="{base}" x2="{right}" y2="{base}" '
        'stroke="{colour}"/>'
        '<text class="y-max" x="{label_x}" y="{top_text}" text-anchor="end" '
        'font-size="11" fill="currentColor">{peak}</text>'
        '<text class="y-zero" x="{label_x}" y="{base}" text-anchor="end" '
        'font-size="11" fill="currentColor">{zero}</text>'
        '<text class="x-first" x="{left}" y="{date_y}" text-anchor="start" '
        'font-size="11" fill="currentColor">{first}</text>'
        '<text class="x-last" x="{right}" y="{date_y}" text-anchor="end" '
        'font-size="11" fill="currentColor">{last}</text>',
        left=LEFT,
        right=LEFT + plot_width,
        top=TOP,
        base=baseline,
        colour=AXIS_COLOUR,
        label_x=LEFT - 6,
        top_text=TOP + 4,
        peak=usd(highest),
        zero=usd(Decimal(0)),
        date_y=height - 4,
        first=first.isoformat(),
        last=last.isoformat(),
    )
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="cost-chart" role="img" '
        'aria-label="{}" width="{}" height="{}" viewBox="0 0 {} {}" '
        'style="max-width:100%;height:auto">{}{}{}</svg>',
        summary,
        width,
        height,
        width,
        height,
        axis,
        format_html_join("", "{}", ((column,) for column in columns)),
        marked_label,
    )
