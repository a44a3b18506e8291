"""A compact Markdown summary of a run for a CI job page (GitHub's
``$GITHUB_STEP_SUMMARY``, ``--audit-markdown PATH``): one table, a row per spec
with its verdict, r, ρ, the probe loss then → now, the first moved layer, the
failing checks, and the mean KLD and same top against each divergence reference.

Every number is a report field (or :mod:`audit.report.view`'s); every string from a
report is escaped for a Markdown table cell that GitHub renders with HTML allowed:
``<``, ``>`` and ``&`` as entities, Markdown's punctuation and ``|`` behind a
backslash, line breaks as spaces.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from audit.checks import check_title
from audit.errors import ReportError
from audit.report.data import Report
from audit.report.view import divergence_lines

COLUMNS = ("spec", "verdict", "Pearson r", "ρ", "probe loss then → now (nats)",
           "first moved layer", "failing checks", "KLD / same top")
MAX_CHECKS = 3
"""Failing checks named per row; the rest are counted."""
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def cell(text: object) -> str:
    """``text`` as the content of one Markdown table cell, shown literally."""
    escaped = html.escape(" ".join(str(text).split()), quote=False)
    return _MARKDOWN.sub(r"\\\1", escaped)


def _num(value: float | None, digits: int) -> str:
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "n/a"


def _pm(value: float, se: float, digits: int) -> str:
    shown = _num(value, digits)
    return f"{shown} ± {se:.{digits}f}" if shown != "n/a" and math.isfinite(se) else shown


def row(report: Report) -> tuple[str, ...]:
    """The cells of one spec's row (escaped)."""
    law = report.law
    verdict = "✅ pass" if report.verdict == "pass" else f"❌ {cell(report.verdict)}"
    if report.expected_failures:
        verdict += f" ({len(report.expected_failures)} xfail)"
    now = report.loss.mean if report.loss is not None else math.nan
    losses = [f"{cell(c.then_label)}: {_num(c.loss_then, 4)} → {_num(c.loss_now, 4)}"
              for c in report.comparisons]
    loss = "; ".join(losses) if losses else _num(now, 4)
    moved = "; ".join(f"{cell(c.kind)}: "
                      + ("none" if c.first_moved_layer is None else str(c.first_moved_layer))
                      for c in report.comparisons) or "—"
    divergence = "; ".join(
        f"{cell(d.source)}: {_num(d.kld_mean, 6)}{' (bound)' if d.bound else ''} / "
        f"{_num(d.same_top_percent, 2)} %" for d in divergence_lines(report)) or "—"
    failing = report.violations
    checks = "; ".join(f"{cell(check_title(c.check))}: {cell(c.message)}"
                       for c in failing[:MAX_CHECKS])
    if len(failing) > MAX_CHECKS:
        checks += f"; and {len(failing) - MAX_CHECKS} more"
    return (cell(report.name), verdict, _pm(law.pearson_r, law.pearson_r_se, 4),
            _pm(law.rho, law.rho_se, 5), loss, moved, checks or "—", divergence)


def markdown_summary(reports: Sequence[Report], html_path: str | None = None) -> str:
    """The summary of a run: a heading, the table, and where the HTML page is."""
    passed = sum(r.verdict == "pass" for r in reports)
    lines = [f"### equilaw: {passed} of {len(reports)} specs pass", ""]
    if reports:
        lines += ["| " + " | ".join(COLUMNS) + " |",
                  "|" + "|".join("---" for _ in COLUMNS) + "|"]
        lines += ["| " + " | ".join(row(r)) + " |" for r in reports]
    else:
        lines.append("No spec was audited in this run.")
    if html_path:
        lines += ["", f"The full report with the law's charts: {cell(html_path)} (one "
                      "self-contained HTML file, in this run's artifacts)."]
    return "\n".join(lines) + "\n"


def write_markdown(path: str | os.PathLike, reports: Sequence[Report], *, append: bool = False,
                   html_path: str | None = None) -> Path:
    """Write the summary to ``path`` (atomically), or append it (``append``: a job
    summary file that other steps write to as well)."""
    from audit.internal.files import write_text_atomic

    text = markdown_summary(reports, html_path)
    try:
        if append:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(text + "\n")
            return Path(path)
        return write_text_atomic(path, text)
    except OSError as exc:
        raise ReportError(f"cannot write Markdown summary {os.fspath(path)}: {exc}") from exc
