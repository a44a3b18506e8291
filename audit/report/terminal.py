"""Rich terminal rendering of a :class:`~audit.report.data.Report`.

Draws only what the report holds; the one piece of arithmetic here is placing
points on the character grid of the picture.
"""

from __future__ import annotations

import math
from typing import Any

from audit.internal.plus_minus import plus_minus
from audit.report.data import Comparison, DivergenceRow, LayerRow, Report

STATUS_STYLE = {"ok": "green", "violation": "bold red", "expected": "yellow", "unjudged": "dim"}
PLOT_WIDTH = 28


def _value_pm(value: float, se: float, digits: int = 4) -> str:
    """``+0.0123 ± 0.0010``; values too small for ``digits`` decimals (a parity
    difference) in scientific notation."""
    if not math.isfinite(value):
        return "nan"
    small = value != 0 and abs(value) < 10 ** -(digits - 1)
    shown = f"{value:+.2e}" if small else f"{value:+.{digits}f}"
    return shown + plus_minus(se, ".1e" if small else f".{digits}f")


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


DRIFT_STYLE = {"ok": "green", "moved": "yellow", "violation": "bold red"}


def _comparison(c: Comparison) -> Any:
    """Then and now per layer against a baseline or a merge's parents; the first
    moved layer highlighted."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    then = c.then_label
    moved = (f"first moved layer {c.first_moved_layer}" if c.first_moved_layer is not None
             else "no layer moved")
    head = Text.assemble(
        (f"{c.title}: ", "bold"), (moved, "bold yellow" if
                                                        c.first_moved_layer is not None else "green"),
        f"\nPearson r {_num(c.pearson_r_then)} → {_num(c.pearson_r_now)}   "
        f"ρ {_num(c.rho_then, 5)} → {_num(c.rho_now, 5)}   "
        f"probe loss {_num(c.loss_then)} → {_num(c.loss_now)} nats"
        + "".join(f"\nnote: {note}" for note in c.notes))
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    drift = "difference" if c.kind in ("parity", "adapter-merged") else "drift"
    for column in ("layer", f"log10 PR {then}", "now", drift, "σ", "status", "from"):
        table.add_column(column, justify="left" if column in ("status", "from") else "right",
                         no_wrap=True)
    for row in c.rows:
        then_text = (_num(row.then_low, 5) if row.then_low == row.then_high
                     else f"{_num(row.then_low, 5)}..{_num(row.then_high, 5)}")
        first = row.layer == c.first_moved_layer
        table.add_row(str(row.layer), then_text, _num(row.now, 5),
                      _value_pm(row.drift, row.drift_se), _num(row.sigma, 1),
                      Text(row.status + (" ← first moved" if first else ""),
                           style=DRIFT_STYLE.get(row.status, "")),
                      row.sources, style="on grey15" if first else None)
    return Group(head, table)


_PERCENTILE_LABELS = (("max", "Maximum"), ("99.9", "99.9%  "), ("99", "99.0%  "),
                      ("95", "95.0%  "), ("90", "90.0%  "), ("median", "Median "),
                      ("10", "10.0%  "), ("5", " 5.0%  "), ("1", " 1.0%  "), ("min", "Minimum"))
"""llama.cpp's row labels of the percentiles, by :data:`PERCENTILES` name."""


def divergence_text(row: DivergenceRow) -> str:
    """One divergence in llama.cpp's ``--kl-divergence`` summary layout (Δp and
    same top in percent, as it prints them)."""
    from audit.compare.output_gate import source_words

    r = row.result
    gated = "gated" if row.gated else "reported, not gated"
    bound = ("; KL: a lower bound from the stored token record (same top and Δp exact)"
             if r.kld_is_bound else "")
    lines = [f"divergence from {source_words(row)} ({gated}; {r.tokens} tokens{bound})",
             f"Mean    ln(PPL(Q)/PPL(base)): {r.ln_ppl_ratio:10.6f} ± {r.ln_ppl_ratio_se:10.6f}",
             "", "====== KL divergence statistics ======",
             f"Mean    KLD: {r.kld_mean:10.6f} ± {r.kld_mean_se:10.6f}"]
    lines += [f"{label} KLD: {r.kld_percentiles[key]:10.6f}" for key, label in _PERCENTILE_LABELS]
    lines += ["", "====== Token probability statistics ======",
              f"Mean    Δp: {100 * r.dp_mean:8.3f} ± {100 * r.dp_mean_se:.3f} %"]
    lines += [f"{label} Δp: {100 * r.dp_percentiles[key]:8.3f}%"
              for key, label in _PERCENTILE_LABELS]
    lines += [f"RMS Δp    : {100 * r.rms_dp:8.3f} ± {100 * r.rms_dp_se:.3f} %",
              f"Same top p: {100 * r.same_top:8.3f} ± {100 * r.same_top_se:.3f} %"]
    return "\n".join(lines)


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
        f"Pearson r {_value_pm(law.pearson_r, law.pearson_r_se, 4)}   "
        f"ρ {_num(law.rho, 5)}{plus_minus(law.rho_se, '.5f')}   "
        f"PR_{law.first_layer} → PR_{report.model['layers']}: {_num(law.pr_first)} → {_num(law.pr_last)}   "
        f"mean step {_value_pm(law.mean_step, law.mean_step_se, 5)}   "
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
            _value_pm(row.deviation, row.deviation_se),
            _value_pm(row.step, row.step_se),
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
    if report.loss is not None:
        parts.append(Text(f"probe loss {_num(report.loss.mean)} ± {_num(report.loss.stderr)} nats "
                          f"per token over {report.loss.tokens} tokens"))
    elif report.loss_note:
        parts.append(Text(f"probe loss: none ({report.loss_note})", style="dim"))
    for comparison in report.comparisons:
        parts.append(_comparison(comparison))
    for row in report.divergence:
        parts.append(Text(divergence_text(row)))
        if row.drift is not None:
            parts.append(_comparison(row.drift))
    if report.warnings:
        parts.append(Text("".join(f"warning: {w}\n" for w in report.warnings), style="magenta"))
    from rich.console import Group

    console.print(Panel(Group(*parts), title="equilaw", title_align="left", expand=False))
