"""Inline SVG of a :class:`~audit.report.view.Chart`: readable without JavaScript,
coloured by CSS classes (so the page's light and dark themes apply), a ``<title>``
on every point as its tooltip.

The only arithmetic here is layout: data units to canvas pixels and the tick
positions of the axes.  Every text and attribute value is escaped
(:func:`markupsafe.escape`), so no string from a report can open a tag.

Elements the tests and the browser tests count: ``circle.pt`` (one per point, class
``pt-<status>``), ``path.err`` (one per error bar), ``g.mark-<style>`` (vertical
markers), ``line.fit``, ``path.band``, ``polyline.series``.
"""

from __future__ import annotations

import math
import re

from markupsafe import Markup, escape

from audit.report.view import Chart

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 44, 42
CHAR_WIDTH = 6.2
"""Approximate width of one legend character at the legend's font size (px)."""


def css_name(value: str) -> str:
    """A class-name suffix: lowercase letters, digits and hyphens only."""
    return re.sub(r"[^a-z0-9-]+", "-", str(value).lower()).strip("-") or "x"


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values in [lo, hi]: steps of 1, 2 or 5 times a power of ten (whole
    numbers when ``integer``)."""
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return [lo]
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + 1e-9 * step:
        ticks.append(0.0 if abs(value) < 1e-12 * step else value)
        value = first + len(ticks) * step
    return ticks


def _tick_label(value: float, ticks: list[float], integer: bool) -> str:
    if integer:
        return f"{value:.0f}"
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(value) or 1.0
    digits = max(0, -math.floor(math.log10(step) + 1e-9))  # steps are 1, 2 or 5 × 10^k
    return f"{value:.{min(digits, 8)}f}"


def _attrs(attrs: dict[str, object]) -> str:
    out = []
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.2f}"
        out.append(f' {key.rstrip("_").replace("_", "-")}="{escape(value)}"')
    return "".join(out)


def _el(tag: str, content: str | Markup = "", **attrs: object) -> Markup:
    body = content if isinstance(content, Markup) else escape(content)
    return Markup(f"<{tag}{_attrs(attrs)}>{body}</{tag}>")


def _title(text: str) -> Markup:
    return _el("title", text)


def render_chart(chart: Chart) -> Markup:
    """The chart as one ``<svg>`` element (``viewBox`` scaled to its container)."""
    x0, x1 = chart.x_range
    y0, y1 = chart.y_range
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + (y1 - y) / (y1 - y0) * ph

    parts: list[Markup] = [_title(chart.title + (f" ({chart.caption})" if chart.caption else "")),
                           _el("rect", class_="frame", x=float(LEFT), y=float(TOP),
                               width=float(pw), height=float(ph))]
    # axes: grid, ticks, labels
    xticks = nice_ticks(x0, x1, 8, chart.integer_x)
    yticks = nice_ticks(y0, y1, 5)
    for t in xticks:
        parts.append(_el("line", class_="grid", x1=sx(t), x2=sx(t), y1=float(TOP),
                         y2=float(TOP + ph)))
        parts.append(_el("text", _tick_label(t, xticks, chart.integer_x), class_="tick",
                         x=sx(t), y=float(TOP + ph + 14), text_anchor="middle"))
    for t in yticks:
        parts.append(_el("line", class_="grid", x1=float(LEFT), x2=float(LEFT + pw), y1=sy(t),
                         y2=sy(t)))
        parts.append(_el("text", _tick_label(t, yticks, False), class_="tick",
                         x=float(LEFT - 5), y=sy(t) + 3.5, text_anchor="end"))
    parts.append(_el("text", chart.x_label, class_="axis-label", x=float(LEFT + pw / 2),
                     y=float(HEIGHT - 6), text_anchor="middle"))
    parts.append(_el("text", chart.y_label, class_="axis-label", x=12.0, y=float(TOP + ph / 2),
                     text_anchor="middle", transform=f"rotate(-90 12 {TOP + ph / 2:.2f})"))
    # bands, markers, lines, then the data on top
    for band in chart.bands:
        top = [f"{sx(x):.2f},{sy(y):.2f}" for x, y in zip(band.xs, band.high)]
        bottom = [f"{sx(x):.2f},{sy(y):.2f}" for x, y in zip(reversed(band.xs),
                                                             reversed(band.low))]
        parts.append(_el("path", _title(band.label), class_=f"band band-{css_name(band.style)}",
                         d="M" + " L".join(top + bottom) + " Z"))
    step = pw / max(1.0, x1 - x0)
    for mark in chart.marks:
        x = sx(mark.x)
        style = css_name(mark.style)
        if mark.style == "violation":
            shape = _el("rect", x=x - step / 2, y=float(TOP), width=step, height=float(ph))
        else:
            shape = _el("line", x1=x, x2=x, y1=float(TOP), y2=float(TOP + ph))
        label = (_el("text", mark.label, x=x + 3, y=float(TOP + 10), class_="mark-label")
                 if mark.style == "first-moved" else Markup(""))
        parts.append(_el("g", _title(mark.label) + shape + label, class_=f"mark mark-{style}"))
    for line in chart.lines:
        parts.append(_el("line", _title(line.label), class_=css_name(line.style),
                         x1=sx(line.x0), y1=sy(line.y0), x2=sx(line.x1), y2=sy(line.y1)))
    for series in chart.series:
        style = css_name(series.style)
        if series.connect and len(series.points) > 1:
            parts.append(_el("polyline", _title(series.label),
                             class_=f"series series-{style}",
                             points=" ".join(f"{sx(p.x):.2f},{sy(p.y):.2f}"
                                             for p in series.points)))
        if not series.markers:
            continue
        dots = []
        for p in series.points:
            x = sx(p.x)
            if p.low is not None and p.high is not None:
                lo, hi = sy(p.low), sy(p.high)
                dots.append(_el("path", class_="err", d=f"M{x:.2f},{lo:.2f} V{hi:.2f} "
                                f"M{x - 3:.2f},{lo:.2f} H{x + 3:.2f} M{x - 3:.2f},{hi:.2f} "
                                f"H{x + 3:.2f}"))
            dots.append(_el("circle", _title(p.note),
                            class_=f"pt pt-{css_name(p.status)} pt-{style}", cx=x, cy=sy(p.y),
                            r=3.5, data_x=f"{p.x:g}"))
        parts.append(_el("g", Markup("").join(dots), class_=f"points points-{style}"))
    parts.append(_legend(chart))
    return _el("svg", Markup("").join(parts), class_=f"chart chart-{css_name(chart.key)}",
               viewBox=f"0 0 {WIDTH} {HEIGHT}", role="img",
               aria_label=chart.title, preserveAspectRatio="xMidYMid meet")


def _legend(chart: Chart) -> Markup:
    """Swatches and labels above the plot, wrapped onto a second row when long."""
    items: list[tuple[str, str]] = []
    for series in chart.series:
        kind = "dot" if series.markers and not series.connect else "line"
        items.append((f"{kind} swatch-{css_name(series.style)}", series.label))
    items += [(f"line swatch-{css_name(line.style)}", line.label) for line in chart.lines
              if line.style != "zero"]
    items += [(f"box swatch-{css_name(band.style)}", band.label) for band in chart.bands]
    seen = set()
    for mark in chart.marks:
        if mark.style not in seen:
            seen.add(mark.style)
            words = {"first-moved": "first moved layer", "expected": "declared deviant layer",
                     "violation": "violating layer"}.get(mark.style, mark.style)
            items.append((f"box swatch-mark-{css_name(mark.style)}", words))
    out, x, y = [], float(LEFT), 14.0
    for kind, label in items:
        width = 18 + CHAR_WIDTH * len(label) + 14
        if x + width > WIDTH - RIGHT and x > LEFT:
            x, y = float(LEFT), y + 15
        shape, swatch = kind.split(" ", 1)
        if shape == "dot":
            mark = _el("circle", cx=x + 6, cy=y - 4, r=3.5, class_=f"swatch {swatch}")
        elif shape == "box":
            mark = _el("rect", x=x, y=y - 9, width=12.0, height=10.0, class_=f"swatch {swatch}")
        else:
            mark = _el("line", x1=x, x2=x + 14, y1=y - 4, y2=y - 4, class_=f"swatch {swatch}")
        out.append(mark + _el("text", label, x=x + 18, y=y, class_="legend"))
        x += width
    return _el("g", Markup("").join(out), class_="legend")
