"""Calibrated thresholds: a stated margin outside what one measurement shows.

``calibrate_thresholds(report)`` reads the law fit and the per-layer rows of a
:class:`~audit.report.data.Report` (any thresholds it was judged with are ignored)
and returns a :class:`Calibration`; :func:`audit.calibrated_spec.spec_text` writes
it as a commented YAML spec, and :func:`audit.calibrate.calibrate` measures,
writes and checks.  Nothing here runs a model or touches the disk.

Units: r and ρ are unitless; deviations and steps are in decades of PR (log10 PR);
``min_step_fraction`` is in units of |mean step|.  k is ``margin_sigma`` (default
3) and "se" a jackknife standard error; a margin is always the wider of k se and
an absolute floor, so a threshold sits outside the measured value by both.

Declared deviant layers (``law.expected_deviations``), among the judged layers
1..L (layer 0, the embedding output, is never judged): layer l is declared when

- |deviation_l| > 4 × median |deviation| over the judged layers AND
  |deviation_l| / se_l > 6, or
- step_l < −3 × |mean step| AND step_l / se_l < −2: the layer loses, clearly and
  significantly, what an average layer gains (layers 2..L: layer 1 has no step).

An unknown standard error (a probe with one shard) declares nothing.  A declared
layer is exempt from the per-layer thresholds, which may still be wide enough for
it: pytest then shows it as XPASS, which is harmless (and tells that it is within
the tolerance of the others).

Thresholds (the non-declared layers only enter the per-layer ones):

- ``max_pearson_r`` = r + max(k·se_r, 0.01), at most 1;
- ``rho`` = [ρ − m, ρ + m], m = max(k·se_ρ, 0.001); lo stays > 0;
- ``max_deviation`` = max(max_l (|deviation_l| + max(k·se_l, 0.005)), 0.01) over
  non-declared layers; ``max_deviation_sigma`` = 6 (the declaration rule's σ; off
  when the probe has one shard): a layer fails only beyond both;
- ``min_step_fraction`` = min(min_l (step_l − max(k·se_l, 0.5·|mean step|)) /
  |mean step|, −1) over non-declared layers 2..L; off when the mean step is 0.

Every threshold is then rounded outward on a fixed decimal grid (r and deviation
to 0.001, ρ to 0.0001, the step fraction to 0.01): up for an upper bound, down
for a lower bound, so the rounding only widens the margin.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import numpy as np

from audit.errors import StatsError
from audit.report.data import LayerRow, Report

MARGIN_SIGMA = 3.0
"""k: standard errors between a measured value and its threshold."""
MARGIN_R = 0.01
"""Absolute margin of ``max_pearson_r`` (unitless)."""
MARGIN_RHO = 0.001
"""Absolute margin of each end of ``rho`` (unitless)."""
MARGIN_DEVIATION = 0.005
"""Absolute margin of ``max_deviation`` (decades of PR)."""
MARGIN_STEP = 0.5
"""Absolute margin of ``min_step_fraction`` (units of |mean step|)."""
FLOOR_DEVIATION = 0.01
"""``max_deviation`` is never below this (decades of PR)."""
CEILING_STEP_FRACTION = -1.0
"""``min_step_fraction`` is never above this: a layer may lose up to one mean step."""
DECLARE_MEDIAN_FACTOR = 4.0
"""Declared when |deviation| > this × median |deviation| (and beyond DEVIATION_SIGMA)."""
DEVIATION_SIGMA = 6.0
"""σ of the deviation rule for declaring a layer, and the ``max_deviation_sigma`` written."""
DECLARE_STEP_FACTOR = 3.0
"""Declared when step < −this × |mean step| (and beyond DECLARE_STEP_SIGMA)."""
DECLARE_STEP_SIGMA = 2.0
"""Declared when step / its standard error < −this (and below the step factor)."""
DECIMALS = {"max_pearson_r": 3, "rho": 4, "max_deviation": 3, "min_step_fraction": 2}
"""The decimal grid each threshold is rounded outward to."""


@dataclass(frozen=True)
class Threshold:
    """One calibrated threshold and what it came from."""

    key: str
    """The ``law`` key: ``max_pearson_r``, ``rho``, ``max_deviation`` or ``min_step_fraction``."""
    value: float | tuple[float, float]
    """The threshold written (after outward rounding); ``rho`` is (lo, hi)."""
    measured: float
    """The value it sits outside: r, ρ, the largest |deviation| (decades), or the
    most negative step in units of |mean step|."""
    stderr: float
    """Jackknife standard error of ``measured`` (same units); NaN when unknown."""
    margin: float
    """max(k·stderr, absolute margin), in the units of ``measured``."""
    layer: int | None = None
    """The layer that set a per-layer threshold (None at law level, or when the
    floor or ceiling decided)."""


@dataclass(frozen=True)
class Calibration:
    """Thresholds of the law chosen from one measurement (see the module docstring)."""

    max_pearson_r: Threshold
    rho: Threshold
    max_deviation: Threshold
    max_deviation_sigma: float | None
    """DEVIATION_SIGMA, or None when the probe gives no standard errors."""
    min_step_fraction: Threshold | None
    """None when the mean step is 0 or undefined (the check is then off)."""
    expected_deviations: tuple[int, ...]
    """Declared deviant layers, ascending."""
    reasons: Mapping[int, str]
    """Why each declared layer was declared (one line each)."""
    margin_sigma: float
    """k."""
    absolute: Mapping[str, float]
    """The absolute margin of each threshold, by law key, in its units (the floor
    of each margin)."""

    def law(self) -> dict[str, Any]:
        """The ``law`` mapping of a spec, as ``audit.spec.spec_from_dict`` takes it."""
        return {
            "max_pearson_r": self.max_pearson_r.value,
            "rho": list(self.rho.value),  # type: ignore[arg-type]
            "max_deviation": self.max_deviation.value,
            "max_deviation_sigma": self.max_deviation_sigma,
            "min_step_fraction": None if self.min_step_fraction is None
            else self.min_step_fraction.value,
            "expected_deviations": list(self.expected_deviations),
        }


def calibrate_thresholds(report: Report, margin_sigma: float = MARGIN_SIGMA, *,
                         margin_r: float = MARGIN_R, margin_rho: float = MARGIN_RHO,
                         margin_deviation: float = MARGIN_DEVIATION,
                         margin_step: float = MARGIN_STEP) -> Calibration:
    """Thresholds that ``report``'s checkpoint passes by a margin (module docstring).

    ``margin_sigma`` is k (>= 0); the ``margin_*`` are the absolute margins in the
    units of each threshold.  Raises :class:`StatsError` when the fit is undefined
    (a judged layer's PR is not positive and finite, or the curve is flat).
    """
    if not (math.isfinite(margin_sigma) and margin_sigma >= 0):
        raise StatsError(f"margin_sigma must be a finite number >= 0, got {margin_sigma!r}")
    law = report.law
    judged = [row for row in report.layers if row.index >= law.first_layer]
    undefined = [row.index for row in judged if not math.isfinite(row.log10_pr)]
    if undefined:
        raise StatsError(f"cannot calibrate {report.name!r}: PR is not a positive finite number "
                         f"at layer{'s' * (len(undefined) > 1)} {', '.join(map(str, undefined))}")
    if not (math.isfinite(law.pearson_r) and math.isfinite(law.rho)):
        raise StatsError(f"cannot calibrate {report.name!r}: the law fit is undefined "
                         "(log10 PR is flat over the judged layers)")

    def margin(se: float, floor: float) -> float:
        return max(margin_sigma * se, floor) if math.isfinite(se) else floor

    reasons = declared_layers(report)
    undeclared = [row for row in judged if row.index not in reasons]

    m_r = margin(law.pearson_r_se, margin_r)
    r_max = min(_outward(law.pearson_r + m_r, DECIMALS["max_pearson_r"], up=True), 1.0)
    m_rho = margin(law.rho_se, margin_rho)
    lo = _outward(law.rho - m_rho, DECIMALS["rho"], up=False)
    if lo <= 0:  # a range that reaches 0 or below: keep it positive, below ρ
        lo = min(10.0 ** -DECIMALS["rho"], law.rho / 2)
    hi = _outward(law.rho + m_rho, DECIMALS["rho"], up=True)

    return Calibration(
        max_pearson_r=Threshold("max_pearson_r", r_max, law.pearson_r, law.pearson_r_se, m_r),
        rho=Threshold("rho", (lo, hi), law.rho, law.rho_se, m_rho),
        max_deviation=_deviation_threshold(undeclared, margin, margin_deviation),
        max_deviation_sigma=DEVIATION_SIGMA if report.shards >= 2 else None,
        min_step_fraction=_step_threshold(undeclared, law.mean_step, margin, margin_step),
        expected_deviations=tuple(sorted(reasons)),
        reasons=dict(sorted(reasons.items())),
        margin_sigma=float(margin_sigma),
        absolute={"max_pearson_r": margin_r, "rho": margin_rho,
                  "max_deviation": margin_deviation, "min_step_fraction": margin_step},
    )


def declared_layers(report: Report) -> dict[int, str]:
    """Judged layers the declaration rule picks (module docstring), with the reason."""
    law = report.law
    judged = [row for row in report.layers if row.index >= law.first_layer]
    median = float(np.median([abs(row.deviation) for row in judged]))
    bound = DECLARE_STEP_FACTOR * abs(law.mean_step)
    out: dict[int, str] = {}
    for row in judged:
        why = []
        dev_sigma = _ratio(abs(row.deviation), row.deviation_se)
        if abs(row.deviation) > DECLARE_MEDIAN_FACTOR * median and dev_sigma > DEVIATION_SIGMA:
            why.append(f"deviation {row.deviation:+.4f} ± {row.deviation_se:.2g} "
                       f"({_ratio(abs(row.deviation), median):.1f} × median |deviation|, "
                       f"{dev_sigma:.1f} σ)")
        step_sigma = _ratio(row.step, row.step_se)
        if row.index > law.first_layer and row.step < -bound and step_sigma < -DECLARE_STEP_SIGMA:
            why.append(f"step {row.step:+.4f} ± {row.step_se:.2g} "
                       f"({_ratio(row.step, abs(law.mean_step)):.1f} × |mean step|, "
                       f"{step_sigma:.1f} σ)")
        if why:
            out[row.index] = "; ".join(why)
    return out


def _ratio(value: float, scale: float) -> float:
    """value / scale; NaN when the scale is unknown, ±inf when it is 0."""
    if not math.isfinite(scale) or not math.isfinite(value):
        return math.nan
    if scale == 0:
        return math.copysign(math.inf, value) if value != 0 else math.nan
    return value / scale


Margin = Callable[[float, float], float]
"""margin(se, absolute) -> max(k·se, absolute), or absolute when se is unknown."""


def _deviation_threshold(rows: list[LayerRow], margin: Margin, floor_margin: float) -> Threshold:
    if not rows:
        return Threshold("max_deviation", _outward(FLOOR_DEVIATION, DECIMALS["max_deviation"], up=True),
                         math.nan, math.nan, math.nan)
    worst = max(rows, key=lambda row: abs(row.deviation) + margin(row.deviation_se, floor_margin))
    m = margin(worst.deviation_se, floor_margin)
    value = max(abs(worst.deviation) + m, FLOOR_DEVIATION)
    return Threshold("max_deviation", _outward(value, DECIMALS["max_deviation"], up=True),
                     abs(worst.deviation), worst.deviation_se, m,
                     worst.index if value > FLOOR_DEVIATION else None)


def _step_threshold(rows: list[LayerRow], mean_step: float, margin: Margin,
                    floor_margin: float) -> Threshold | None:
    scale = abs(mean_step)
    if not (math.isfinite(scale) and scale > 0):
        return None
    stepped = [row for row in rows if math.isfinite(row.step)]
    if not stepped:
        return Threshold("min_step_fraction", CEILING_STEP_FRACTION, math.nan, math.nan, math.nan)
    # In units of |mean step|: the fraction each layer would need, margin included.
    def need(row: LayerRow) -> float:
        return row.step / scale - margin(row.step_se / scale, floor_margin)
    worst = min(stepped, key=need)
    value = min(need(worst), CEILING_STEP_FRACTION)
    return Threshold("min_step_fraction", _outward(value, DECIMALS["min_step_fraction"], up=False),
                     worst.step / scale, worst.step_se / scale,
                     margin(worst.step_se / scale, floor_margin),
                     worst.index if value < CEILING_STEP_FRACTION else None)


def _outward(value: float, decimals: int, *, up: bool) -> float:
    """``value`` rounded to ``decimals`` places, up (ceiling) or down (floor): the
    result is >= value going up and <= value going down, as floats.  The shortest
    decimal that reads back as ``value`` is rounded (so 0.01 stays 0.01, although
    the float 0.01 lies a little above 1/100); float() is monotone, and reads that
    decimal back as ``value``, so the result never moves inward."""
    grid = Decimal(1).scaleb(-decimals)
    exact = Decimal(repr(float(value)))
    return float(exact.quantize(grid, rounding=ROUND_CEILING if up else ROUND_FLOOR))


__all__ = ["Calibration", "Threshold", "calibrate_thresholds", "declared_layers"]
