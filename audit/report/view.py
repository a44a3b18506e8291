"""What the HTML page and the Markdown summary show, derived from the report data in
one place.

The renderers (:mod:`audit.report.svg`, :mod:`audit.report.html`, the template,
:mod:`audit.report.markdown`) never compute: every number they draw or print is a
field of a :class:`Report`, a :class:`MutationReport` or a :class:`Trajectory`, or is
derived here: error-bar ends (value ± its standard error), the fitted line's end
points, a chart's extent, the tolerance band, the steps a trajectory's curves show,
the counts of the verdict banner, the mutation matrix.  Charts are in data units;
placing them on a canvas is the SVG renderer's only arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from audit.checks import check_title
from audit.report.data import Comparison, Report
from audit.report.mutations import CHECK_KINDS, MutationReport
from audit.report.trajectory import Trajectory

DRIFT_CHECK = {"baseline": "drift", "merge": "merge_drift", "parity": "parity_log10_pr",
               "adapter": "adapter_drift", "adapter-merged": "adapter_merged_log10_pr"}
"""The per-layer check of each kind of comparison, whose threshold is the tolerance
band of its drift chart."""
TRAJECTORY_CURVES = 4
"""How many steps' per-layer curves a trajectory's chart draws."""
MAX_FAILURES = 20
"""Failing checks listed in a banner; the rest are counted."""


@dataclass(frozen=True)
class Point:
    """One plotted value; ``low``/``high`` are its error bar's ends (None: no bar)."""

    x: float
    y: float
    low: float | None
    high: float | None
    status: str
    """A layer's or drift row's status (``ok``, ``violation``, ``expected``, ``moved``,
    ``unjudged``): the point's colour."""
    note: str
    """The tooltip: what the point is, in words and numbers."""


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[Point, ...]
    style: str
    """``measured``, ``reference``, ``r``, ``rho`` or ``seq-N`` (the N-th curve)."""
    connect: bool = True
    """Draw a line through the points."""
    markers: bool = True
    """Draw a dot per point (with its error bar when it has one)."""


@dataclass(frozen=True)
class Line:
    """A straight segment, in data units (the fitted line, the zero line)."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str
    style: str


@dataclass(frozen=True)
class Band:
    """A filled area between ``low`` and ``high`` over ``xs`` (a tolerance band,
    the parents' range)."""

    xs: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    label: str
    style: str


@dataclass(frozen=True)
class Mark:
    """A vertical marker at ``x``: ``first-moved``, ``expected`` or ``violation``."""

    x: float
    label: str
    style: str


@dataclass(frozen=True)
class Chart:
    key: str
    """What the chart shows: ``law``, ``drift``, ``trajectory-r``, ``trajectory-rho``,
    ``trajectory-curves`` (a CSS class and the browser tests' handle)."""
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    lines: tuple[Line, ...] = ()
    bands: tuple[Band, ...] = ()
    marks: tuple[Mark, ...] = ()
    caption: str = ""
    integer_x: bool = True
    """Ticks on whole numbers (layer indices, steps)."""


@dataclass(frozen=True)
class Counts:
    """The verdict banner's numbers: checks that passed, failed and failed as
    declared (xfail)."""

    passed: int
    failed: int
    expected: int


@dataclass(frozen=True)
class Failure:
    what: str
    """The check in words (:attr:`audit.checks.Check.title`)."""
    message: str
    expected: bool


@dataclass(frozen=True)
class LossRow:
    label: str
    then: float
    now: float
    change: float
    """now − then (NaN when either is unknown)."""


@dataclass(frozen=True)
class DivergenceLine:
    """One row of a spec's divergence table: llama.cpp's figures against one
    reference, same top and RMS Δp in percent."""

    source: str
    """``reference_model``, ``baseline`` or ``parent:<label>``."""
    label: str
    gated: bool
    bound: bool
    """The KLs are the stored token record's lower bound."""
    kld_mean: float
    kld_mean_se: float
    kld_p99: float
    same_top_percent: float
    same_top_percent_se: float
    rms_dp_percent: float
    ln_ppl_ratio: float
    tokens: int


def divergence_lines(report: Report) -> tuple[DivergenceLine, ...]:
    from audit.compare.output_gate import source_words

    return tuple(DivergenceLine(row.source, source_words(row), row.gated, row.result.kld_is_bound,
                                row.result.kld_mean, row.result.kld_mean_se, row.result.kld_p99,
                                100 * row.result.same_top, 100 * row.result.same_top_judged_se,
                                100 * row.result.rms_dp, row.result.ln_ppl_ratio,
                                row.result.tokens)
                 for row in report.divergence)


@dataclass(frozen=True)
class ComparisonView:
    comparison: Comparison
    drift: Chart
    tolerance: float | None
    """The drift's effect tolerance (the band), or None when none is set."""


@dataclass(frozen=True)
class SpecView:
    report: Report
    anchor: str
    counts: Counts
    failures: tuple[Failure, ...]
    more_failures: int
    """Failing checks not listed (beyond :data:`MAX_FAILURES`)."""
    law: Chart
    comparisons: tuple[ComparisonView, ...]
    loss: tuple[LossRow, ...]
    provenance: tuple[tuple[str, str], ...]
    divergence: tuple[DivergenceLine, ...] = ()


@dataclass(frozen=True)
class Cell:
    """One mutant in the operator × block matrix."""

    caught: bool
    control: bool
    kinds: tuple[str, ...]
    style: str
    """``law``, ``drift`` or ``loss`` (the first kind that caught it), ``missed``,
    ``control-ok`` or ``control-flagged``."""
    localised: bool
    note: str


@dataclass(frozen=True)
class MutationView:
    report: MutationReport
    anchor: str
    blocks: tuple[int | None, ...]
    """Matrix columns: the damaged blocks in order (None: the control's column)."""
    rows: tuple[tuple[str, tuple[Cell | None, ...]], ...]
    """(operator, one cell per column or None where no mutant was made)."""
    caught: int
    damaged: int


@dataclass(frozen=True)
class TrajectoryView:
    trajectory: Trajectory
    anchor: str
    r: Chart
    rho: Chart
    curves: Chart
    shown_steps: tuple[int, ...]


@dataclass(frozen=True)
class PageView:
    specs: tuple[SpecView, ...]
    mutations: tuple[MutationView, ...]
    trajectories: tuple[TrajectoryView, ...]


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _bar(y: float, se: float) -> tuple[float | None, float | None]:
    return (y - se, y + se) if _finite(se) and se > 0 else (None, None)


def extent(values: Iterable[float | None], pad: float = 0.06) -> tuple[float, float]:
    """The range of the finite ``values`` widened by ``pad`` of its span on each
    side; a single value gets ±(10 % of it, or 0.5); none gives (0, 1)."""
    finite = [float(v) for v in values if _finite(v)]
    if not finite:
        return (0.0, 1.0)
    lo, hi = min(finite), max(finite)
    if hi == lo:
        half = abs(lo) * 0.1 or 0.5
        return (lo - half, hi + half)
    span = hi - lo
    return (lo - pad * span, hi + pad * span)


def _chart_y(series: Sequence[Series], lines: Sequence[Line] = (), bands: Sequence[Band] = (),
             extra: Sequence[float] = ()) -> tuple[float, float]:
    values: list[float | None] = list(extra)
    for s in series:
        for p in s.points:
            values += [p.y, p.low, p.high]
    for line in lines:
        values += [line.y0, line.y1]
    for band in bands:
        values += list(band.low) + list(band.high)
    return extent(values)


def _x_range(xs: Iterable[float]) -> tuple[float, float]:
    xs = [x for x in xs if _finite(x)]
    return (min(xs) - 0.5, max(xs) + 0.5) if xs else (0.0, 1.0)


def _pm(value: float, se: float, digits: int) -> str:
    if not _finite(value):
        return "n/a"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if _finite(se) else "")


def law_chart(report: Report) -> Chart:
    """log10 PR per hidden state with jackknife error bars, the fitted line over the
    judged layers, declared deviant layers and violating layers marked, and every
    comparison's reference on the same axes (a baseline's or another backend's
    curve; a merge's parents as the range they span)."""
    layers = report.layers
    points = tuple(
        Point(row.index, row.log10_pr, *_bar(row.log10_pr, row.log10_pr_se), row.status,
              f"layer {row.index}: log10 PR {_pm(row.log10_pr, row.log10_pr_se, 5)}, "
              f"PR {row.pr:.5f}, fitted {row.fitted:.5f} ({row.status})")
        for row in layers if _finite(row.log10_pr))
    series = [Series("log10 PR (measured)", points, "measured", connect=False)]
    lines = []
    first, last = report.law.first_layer, len(layers) - 1
    if 0 <= first < last and _finite(layers[first].fitted) and _finite(layers[last].fitted):
        lines.append(Line(first, layers[first].fitted, last, layers[last].fitted,
                          f"fitted line (slope {report.law.slope:+.5f} per layer)", "fit"))
    bands = []
    for c in report.comparisons:
        rows = [r for r in c.rows if _finite(r.then_low) and _finite(r.then_high)]
        if not rows:
            continue
        if c.kind == "merge":
            bands.append(Band(tuple(r.layer for r in rows), tuple(r.then_low for r in rows),
                              tuple(r.then_high for r in rows), "parents' range", "parents"))
        else:
            series.append(Series(
                c.then_label, tuple(Point(r.layer, r.then_low, None, None, "reference",
                                          f"layer {r.layer}: {c.then_label} {r.then_low:.5f}")
                                    for r in rows), "reference", connect=True, markers=False))
    declared = report.spec.get("law", {}).get("expected_deviations") or ()
    marks = [Mark(k, f"declared {k}", "expected") for k in declared if 0 <= k <= last]
    marks += [Mark(row.index, f"violation {row.index}", "violation") for row in layers
              if row.status == "violation"]
    law = report.law
    caption = (f"Pearson r {_pm(law.pearson_r, law.pearson_r_se, 4)} · "
               f"ρ {_pm(law.rho, law.rho_se, 5)} · slope {law.slope:+.5f} per layer")
    return Chart("law", f"{report.name}: log10 PR per layer", "layer", "log10 PR",
                 tuple(series), _x_range(r.index for r in layers),
                 _chart_y(series, lines, bands), tuple(lines), tuple(bands), tuple(marks),
                 caption)


def drift_tolerance(report: Report, comparison: Comparison) -> float | None:
    """The effect tolerance of a comparison's per-layer check (the threshold its
    checks carry), or None when only the sigma tolerance is set."""
    check = DRIFT_CHECK.get(comparison.kind)
    for c in report.checks:
        if c.check == check and _finite(c.threshold):
            return float(c.threshold)
    return None


def drift_chart(report: Report, comparison: Comparison) -> Chart:
    """Per-layer drift ± its paired standard error, the tolerance band, zero, and
    the first moved layer marked."""
    c = comparison
    word = "difference" if c.kind in ("parity", "adapter-merged") else "drift"
    points = tuple(
        Point(r.layer, r.drift, *_bar(r.drift, r.drift_se), r.status,
              f"layer {r.layer}: {word} {r.drift:+.5f}"
              + (f" ± {r.drift_se:.5f}" if _finite(r.drift_se) else "") + f" ({r.status})")
        for r in c.rows if _finite(r.drift))
    series = (Series(word, points, "measured", connect=False),)
    x_range = _x_range(r.layer for r in c.rows)
    tolerance = drift_tolerance(report, c)
    bands = ((Band(x_range, (-tolerance, -tolerance), (tolerance, tolerance),
                   f"tolerance ±{tolerance:g}", "tolerance"),) if tolerance is not None else ())
    lines = (Line(x_range[0], 0.0, x_range[1], 0.0, "zero", "zero"),)
    marks = ((Mark(c.first_moved_layer, f"first moved {c.first_moved_layer}", "first-moved"),)
             if c.first_moved_layer is not None else ())
    moved = (f"first moved layer {c.first_moved_layer}" if c.first_moved_layer is not None
             else "no layer moved")
    caption = moved + (f" · largest {word} {c.largest_drift:+.5f} at layer "
                       f"{c.largest_drift_layer}" if c.largest_drift_layer is not None else "")
    return Chart("drift", f"{word} {c.title}", "layer", f"{word} (log10 PR)", series, x_range,
                 _chart_y(series, lines, bands), lines, bands, marks, caption)


def counts(report: Report) -> Counts:
    expected = len(report.expected_failures)
    failed = len(report.violations)
    return Counts(len(report.checks) - failed - expected, failed, expected)


def failures(report: Report) -> tuple[tuple[Failure, ...], int]:
    """The failing checks in words (violations first, then the declared ones), at
    most :data:`MAX_FAILURES`, and how many more there are."""
    failing = [Failure(check_title(c.check), c.message, c.expected)
               for c in report.violations + report.expected_failures]
    return tuple(failing[:MAX_FAILURES]), max(0, len(failing) - MAX_FAILURES)


def loss_rows(report: Report) -> tuple[LossRow, ...]:
    """The probe loss now, and then against each comparison."""
    if report.loss is None:
        return ()
    now = report.loss.mean
    rows = [LossRow("this checkpoint", math.nan, now, math.nan)]
    for c in report.comparisons:
        label = (f"parents ({c.loss_judge or 'worst'})" if c.kind == "merge"
                 else c.then_label)
        change = c.loss_now - c.loss_then if _finite(c.loss_then) and _finite(c.loss_now) \
            else math.nan
        rows.append(LossRow(label, c.loss_then, c.loss_now, change))
    return tuple(rows)


def _flat(prefix: str, value: object) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        out: list[tuple[str, str]] = []
        for key, item in value.items():
            out += _flat(f"{prefix}.{key}" if prefix else str(key), item)
        return out
    return [(prefix, "—" if value is None else str(value))]


def provenance(report: Report) -> tuple[tuple[str, str], ...]:
    """What was measured, on what, with what: (key, value) in reading order."""
    out = _flat("model", report.model) + _flat("corpus", report.corpus)
    out += _flat("probe", report.probe)
    out += [("backend", report.backend), ("measure", report.measure),
            ("normalization", report.normalization), ("target", report.target),
            ("statistics", report.statistics), ("shards", str(report.shards)),
            ("spec", str(report.spec.get("source", "—")))]
    out += _flat("seeds", report.seeds) + _flat("versions", report.versions)
    out += _flat("timing", report.timing)
    return tuple(out)


def spec_view(report: Report, anchor: str) -> SpecView:
    shown, more = failures(report)
    return SpecView(report, anchor, counts(report), shown, more, law_chart(report),
                    tuple(ComparisonView(c, drift_chart(report, c), drift_tolerance(report, c))
                          for c in report.comparisons),
                    loss_rows(report), provenance(report), divergence_lines(report))


def mutation_view(report: MutationReport, anchor: str) -> MutationView:
    """The operator × block matrix, coloured by the first kind of check that caught
    each mutant; the healthy control in a column of its own."""
    blocks = sorted({row.block for row in report.mutants if row.block is not None})
    columns: list[int | None] = list(blocks)
    if any(row.block is None for row in report.mutants):
        columns.append(None)
    operators = list(dict.fromkeys(row.operator for row in report.mutants))
    cells: dict[tuple[str, int | None], Cell] = {}
    for row in report.mutants:
        kinds = tuple(k for k in CHECK_KINDS if k in row.checks)
        if row.control:
            style = "control-flagged" if row.caught else "control-ok"
        else:
            style = (kinds[0] if kinds else "caught") if row.caught else "missed"
        moved = "-" if row.first_moved_layer is None else row.first_moved_layer
        note = (f"{row.label}: {'caught by ' + ', '.join(kinds) if row.caught else 'not caught'}"
                f"; first moved layer {moved}, expected {row.expected_layer}; r "
                f"{row.pearson_r:.4f}, loss {row.loss:.4f}")
        cells[(row.operator, row.block)] = Cell(row.caught, row.control, kinds, style,
                                                row.localised, note)
    rows = tuple((op, tuple(cells.get((op, b)) for b in columns)) for op in operators)
    damaged = report.damaged
    return MutationView(report, anchor, tuple(columns), rows, sum(r.caught for r in damaged),
                        len(damaged))


def shown_steps(steps: Sequence[int], k: int = TRAJECTORY_CURVES) -> tuple[int, ...]:
    """At most ``k`` steps, evenly spread, always the first and the last."""
    n = len(steps)
    if n <= k:
        return tuple(steps)
    picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
    return tuple(steps[i] for i in picks)


def trajectory_view(trajectory: Trajectory, anchor: str) -> TrajectoryView:
    """r and ρ against the step, and log10 PR per layer for a few steps on one chart."""
    steps = trajectory.steps

    def against_step(key: str, label: str, digits: int) -> Chart:
        points = tuple(Point(s.step, getattr(s, key), None, None,
                             "ok" if s.verdict == "pass" else "violation",
                             f"step {s.step}: {label} {getattr(s, key):.{digits}f} ({s.verdict})")
                       for s in steps if _finite(getattr(s, key)))
        series = (Series(label, points, key),)
        return Chart(f"trajectory-{key}", f"{label} against the training step", "step", label,
                     series, extent(s.step for s in steps), _chart_y(series))

    chosen = shown_steps([s.step for s in steps])
    curves = []
    for i, step in enumerate(chosen):
        entry = next(s for s in steps if s.step == step)
        points = tuple(Point(k, math.log10(pr), None, None, "ok",
                             f"step {step}, layer {k}: log10 PR {math.log10(pr):.5f}")
                       for k, pr in enumerate(entry.pr) if _finite(pr) and pr > 0)
        curves.append(Series(f"step {step}", points, f"seq-{i}"))
    width = max((len(s.pr) for s in steps), default=1)
    curve_chart = Chart("trajectory-curves", "log10 PR per layer at a few steps", "layer",
                        "log10 PR", tuple(curves), (-0.5, width - 0.5), _chart_y(curves))
    return TrajectoryView(trajectory, anchor, against_step("pearson_r", "Pearson r", 4),
                          against_step("rho", "ρ", 5), curve_chart, chosen)


def page_view(reports: Sequence[Report] = (), mutations: Sequence[MutationReport] = (),
              trajectories: Sequence[Trajectory] = ()) -> PageView:
    """Everything the page shows, in its order (anchors are positional, so no name
    from a report ever reaches an ``id`` attribute)."""
    return PageView(tuple(spec_view(r, f"spec-{i}") for i, r in enumerate(reports)),
                    tuple(mutation_view(m, f"mutations-{i}") for i, m in enumerate(mutations)),
                    tuple(trajectory_view(t, f"trajectory-{i}")
                          for i, t in enumerate(trajectories)))
