"""One self-contained HTML page for a whole run: every spec's report, mutation
reports and training trajectories (``--audit-html``, ``python -m audit report``).

The page makes no network request: its CSS and its small script are inline, its
charts inline SVG (:mod:`audit.report.svg`), and no attribute holds a URL (papers
are cited as plain text).  It reads without JavaScript (the script only opens the
collapsed sections for printing and highlights a table row's point), follows the
reader's light or dark theme (``prefers-color-scheme``) and prints legibly.

Jinja2 renders it with autoescaping on (Jinja2's default is off), so every string
from a model, a spec, a path or a corpus is escaped wherever it appears; the
reports ride along as JSON in a ``<script type="application/json"
id="equilaw-data">`` block, escaped by Jinja2's ``tojson`` (``<``, ``>``, ``&``
and ``'`` as ``\\u`` escapes).  Everything shown comes from
:func:`audit.report.view.page_view`; this module only renders.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit.errors import ReportError
from audit.report.data import Report
from audit.report.mutations import MutationReport
from audit.report.trajectory import Trajectory

DATA_ELEMENT_ID = "equilaw-data"
"""The id of the ``<script type="application/json">`` that carries the reports."""


def _num(value: Any, digits: int = 4, signed: bool = False) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a" if value is None else str(value)
    if not math.isfinite(value):
        return "n/a" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pm(value: Any, se: Any, digits: int = 4, signed: bool = False) -> str:
    shown = _num(value, digits, signed)
    if isinstance(se, (int, float)) and math.isfinite(se) and shown != "n/a":
        return f"{shown} ± {se:.{digits}f}"
    return shown


def _sci(value: Any) -> str:
    """A condition number: whole below 1e5, else scientific."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "inf"
    return f"{value:.0f}" if value < 1e5 else f"{value:.1e}"


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    from audit.report.svg import css_name, render_chart

    env = Environment(loader=PackageLoader("audit.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, pm=_pm, sci=_sci, css=css_name, chart=render_chart)
    return env


def render_page(reports: Sequence[Report] = (), mutations: Sequence[MutationReport] = (),
                trajectories: Sequence[Trajectory] = (), title: str = "equilaw report") -> str:
    """The page as text.  The same reports give the same page, byte for byte, whether
    fresh from a run or read back from their JSON files (nothing depends on the
    time or the machine that renders it)."""
    from audit import __version__
    from audit.report.view import page_view

    page = page_view(reports, mutations, trajectories)
    data = {"reports": [r.to_dict() for r in reports],
            "mutations": [m.to_dict() for m in mutations],
            "trajectories": [t.to_dict() for t in trajectories]}
    template = _environment().get_template("page.html.j2")
    return template.render(page=page, data=data, title=title, version=__version__,
                           data_id=DATA_ELEMENT_ID)


def write_page(path: str | os.PathLike, reports: Sequence[Report] = (),
               mutations: Sequence[MutationReport] = (), trajectories: Sequence[Trajectory] = (),
               title: str = "equilaw report") -> Path:
    """Render and write the page atomically (a reader never sees a partial file)."""
    from audit.internal.files import write_text_atomic

    text = render_page(reports, mutations, trajectories, title)
    try:
        return write_text_atomic(path, text)
    except OSError as exc:
        raise ReportError(f"cannot write HTML report {os.fspath(path)}: {exc}") from exc
