"""A training trajectory as a terminal table (``python -m audit trajectory``):
draws what :class:`~audit.report.trajectory.Trajectory` holds, computes nothing."""

from __future__ import annotations

import math
from typing import Any

from audit.report.trajectory import Trajectory

BAR_WIDTH = 20


def render(trajectory: Trajectory, console: Any) -> None:
    """One row per step: r (with a bar: longer is closer to −1), ρ, loss, PR_1 → PR_L."""
    from rich.table import Table
    from rich.text import Text

    console.print(Text(f"{trajectory.name}: the law during training "
                       f"({len(trajectory.steps)} checkpoints)", "bold"))
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in ("step", "Pearson r", "", "ρ", "probe loss", "PR_1 → PR_L", "verdict"):
        table.add_column(column, justify="left" if column in ("", "verdict") else "right",
                         no_wrap=True)
    for s in trajectory.steps:
        r = s.pearson_r
        # the bar shows how far r is below 0, so the law emerging is a bar growing
        filled = 0 if not math.isfinite(r) else round(max(0.0, min(1.0, -r)) * BAR_WIDTH)
        bar = Text("█" * filled + "·" * (BAR_WIDTH - filled), "green" if r <= -0.9 else "yellow")
        pr = (f"{s.pr[1]:.4f} → {s.pr[-1]:.4f}" if len(s.pr) > 1 and all(map(math.isfinite, s.pr))
              else "n/a")
        table.add_row(str(s.step), f"{r:+.4f}" if math.isfinite(r) else "n/a", bar,
                      f"{s.rho:.5f}" if math.isfinite(s.rho) else "n/a",
                      f"{s.loss:.3f}" if math.isfinite(s.loss) else "n/a", pr,
                      Text(s.verdict, "green" if s.verdict == "pass" else "red"))
    console.print(table)
