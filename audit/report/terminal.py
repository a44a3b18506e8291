"""Rich terminal rendering of a :class:`~audit.report.data.Report`.

Draws only what the report holds; the one piece of arithmetic here is placing
points on the character grid of the picture.
"""

from __future__ import annotations

import math
from typing import Any

from audit.report.data import LayerRow, Report

STATUS_STYLE = {"ok": "green", "violation": "bold red", "expected": "yellow", "unjudged": "dim"}
PLOT_WIDTH = 28


def _pm(value: float, se: float, digits: int = 4) -> str:
    if not math.isfinite(value):
        return "nan"
    if math.isfinite(se):
        return f"{value:+.{digits}f} ± {se:.{digits}f}"
    return f"{value:+.{digits}f}"


def _num(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "nan"


def _kappa(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) and value < 1e5 else (
        f"{value:.1e}" if math.isfinite(value) else "inf")


def _picture(rows: tuple[LayerRow, ...], row: LayerRow) -> str:
    """One line of the log10 PR picture: ``●`` the measured value, ``│`` the fitted
    line, on a common scale over the judged layers."""
    values = [v for r in rows if r.status != "unjudged" for v in (r.log10_pr, r.fitted)
              if math.isfinite(v)]
    if not values or row.status == "unjudged" or not math.isfinite(row.log10_pr):
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0

    def col(v: float) -> int:
        return min(PLOT_WIDTH - 1, max(0, round((v - lo) / span * (PLOT_WIDTH - 1))))

    cells = [" "] * PLOT_WIDTH
    if math.isfinite(row.fitted):
        cells[col(row.fitted)] = "│"
    cells[col(row.log10_pr)] = "●"
    return "".join(cells)


def render(report: Report, console: Any) -> None:
    """Print the report on a ``rich.console.Console``."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    law = report.law
    verdict = Text(report.verdict.upper(), style="bold green" if report.verdict == "pass" else "bold red")
    header = Text.assemble(
        (f"{report.name}", "bold"), "  ", verdict, "\n",
        f"model {report.model['path']} ({report.model['architecture']}, "
        f"{report.model['layers']} layers, width {report.model['width']}, backend {report.backend})\n",
        f"measure {report.measure}, normalization {report.normalization}, target {report.target}; "
        f"{report.statistics} statistics, {report.shards} jackknife shards\n",
        f"corpus {report.corpus['name']} sha256 {report.corpus['sha256'][:12]}…, "
        f"{report.corpus['tokens']} tokens, {report.corpus['examples']} examples\n",
        f"Pearson r {_pm(law.pearson_r, law.pearson_r_se, 4)}   "
        f"ρ {_num(law.rho, 5)}" + (f" ± {law.rho_se:.5f}" if math.isfinite(law.rho_se) else "") + "   "
        f"PR_{law.first_layer} → PR_{report.model['layers']}: {_num(law.pr_first)} → {_num(law.pr_last)}   "
        f"mean step {_pm(law.mean_step, law.mean_step_se, 5)}   "
        f"{report.timing.get('tokens_per_second', float('nan')):.0f} tokens/s",
    )
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column, justify in (("layer", "right"), ("PR", "right"), ("log10 PR", "right"),
                            ("fitted", "right"), ("deviation", "right"), ("step", "right"),
                            ("κ", "right"), ("status", "left"), ("log10 PR  ● measured  │ fit", "left")):
        table.add_column(column, justify=justify, no_wrap=True)
    for row in report.layers:
        style = STATUS_STYLE.get(row.status, "")
        table.add_row(
            str(row.index),
            _num(row.pr, 5),
            _num(row.log10_pr, 5),
            _num(row.fitted, 5),
            _pm(row.deviation, row.deviation_se),
            _pm(row.step, row.step_se),
            _kappa(row.condition),
            Text(row.status, style=style),
            Text(_picture(report.layers, row), style=style),
            style="on grey15" if row.status == "violation" else None,
        )
    parts: list[Any] = [header, table]
    failures = report.violations + report.expected_failures
    if failures:
        lines = Text()
        for check in failures:
            tag = "expected" if check.expected else "VIOLATION"
            lines.append(f"{tag}: {check.message}\n", style="yellow" if check.expected else "red")
        parts.append(lines)
    if report.warnings:
        parts.append(Text("".join(f"warning: {w}\n" for w in report.warnings), style="magenta"))
    from rich.console import Group

    console.print(Panel(Group(*parts), title="equilaw", title_align="left", expand=False))
