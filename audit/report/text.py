"""Plain-text rendering of a comparison: the "small report" of a failing pytest
item (header, the numbers then and now, the fix, then a capped table of the
layers that moved).  Draws only what the :class:`~audit.report.data.Comparison`
holds."""

from __future__ import annotations

import math

from audit.report.data import Comparison

MAX_ROWS = 12
"""Layers listed in a failure message; the rest are counted."""


def _f(value: float, digits: int = 5) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def comparison_text(comparison: Comparison, fix: str | None = None) -> str:
    """A few lines: what was compared, r, ρ and loss then and now, the first moved
    layer and the largest drift, ``fix`` (how to accept an intended change), then
    the layers that moved or failed, at most :data:`MAX_ROWS`."""
    c = comparison
    then = "parents (worst)" if c.kind == "merge" else c.then_label
    lines = [
        f"{c.title}: first moved layer "
        f"{c.first_moved_layer if c.first_moved_layer is not None else 'none'}, largest drift "
        + (f"{c.largest_drift:+.4f} at layer {c.largest_drift_layer}"
           if c.largest_drift_layer is not None else "n/a"),
        f"  {'':12} {then:>16} {'now':>10}",
        f"  {'pearson_r':12} {_f(c.pearson_r_then, 4):>16} {_f(c.pearson_r_now, 4):>10}",
        f"  {'rho':12} {_f(c.rho_then):>16} {_f(c.rho_now):>10}",
        f"  {'loss (nats)':12} {_f(c.loss_then, 4):>16} {_f(c.loss_now, 4):>10}",
    ]
    if c.loss_judge == "recipe":
        lines.append(f"  loss judged by the merge's recipe: expected {_f(c.expected_loss, 4)}")
    lines += [f"  note: {note}" for note in c.notes]
    if fix:
        lines.append(f"  {fix}")
    listed = [row for row in c.rows if row.status != "ok"]
    if listed:
        drift = "diff" if c.kind in ("parity", "adapter-merged") else "drift"
        lines.append(f"  {'layer':>5} {'then':>20} {'now':>9} {drift:>9} {'± se':>8} {'σ':>6}  status")
        for row in listed[:MAX_ROWS]:
            then_text = (_f(row.then_low) if row.then_low == row.then_high
                         else f"[{_f(row.then_low)}, {_f(row.then_high)}]")
            mark = " ← first moved" if row.layer == c.first_moved_layer else ""
            shown = (f"{row.drift:>+9.4f}" if abs(row.drift) >= 1e-3 or row.drift == 0
                     else f"{row.drift:>+9.1e}")
            lines.append(f"  {row.layer:>5} {then_text:>20} {_f(row.now):>9} {shown} "
                         f"{_f(row.drift_se, 4):>8} {_f(row.sigma, 1):>6}  {row.status}{mark}")
        if len(listed) > MAX_ROWS:
            lines.append(f"  … and {len(listed) - MAX_ROWS} more layers")
    return "\n".join(lines)
