"""The law of equi-learning as a pure function of per-layer prediction residuals.

``fit_law`` takes one PR value per hidden state (index 0 = embedding output, 1..L =
block outputs, as in transformers' ``hidden_states``) and returns a frozen
:class:`LawFit`: the straight line through log10 PR against the layer index, the
decay ratio rho, the telescoped mean step, and per layer the fitted value, the
deviation from the line and the step from the previous layer.  Given the PR values
recomputed with each jackknife shard left out, it also gives standard errors of all
of these.  No statistics are computed here from raw features: see ``audit.stats``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.errors import StatsError
from audit.stats.jackknife import jackknife_se
from audit.stats.measures import log10_or_nan

_SCALARS = ("slope", "intercept", "pearson_r", "r_squared", "rho", "mean_step")
_ARRAYS = ("pr", "log10_pr", "fitted", "deviation", "step")


@dataclass(frozen=True, eq=False)
class LawFit:
    """The law fitted to one curve of prediction residuals.

    Layers are indexed 0..L; the fit uses the judged layers ``first_layer..L``.
    Every per-layer array has length L+1 and holds NaN where its quantity is not
    defined (layers before ``first_layer``; ``step`` also at ``first_layer``).
    Standard errors (``*_se``) are jackknife estimates from leave-one-shard-out
    curves, NaN when fewer than two shards were given.  Arrays are read-only.
    """

    first_layer: int
    """First judged layer (1 by default: layer 0, the embedding output, is reported
    but never judged)."""
    slope: float
    """Least-squares slope of log10 PR against the layer index, in decades per layer
    (< 0 when layers learn)."""
    intercept: float
    """Least-squares intercept: the fitted log10 PR at layer index 0."""
    pearson_r: float
    """Pearson correlation of log10 PR with the layer index over the judged layers,
    in [-1, 1]; NaN when the curve is flat or has a non-finite value."""
    r_squared: float
    """Coefficient of determination of the line, = pearson_r**2 (simple regression
    with intercept)."""
    rho: float
    """Decay ratio 10**slope: the fitted factor by which PR shrinks per layer."""
    mean_step: float
    """Telescoped mean step (log10 PR_first - log10 PR_L) / (L - first), in decades
    per layer (> 0 when layers learn)."""
    slope_se: float
    intercept_se: float
    pearson_r_se: float
    r_squared_se: float
    rho_se: float
    mean_step_se: float
    pr: np.ndarray
    """PR per layer, float64 [L+1], as given."""
    log10_pr: np.ndarray
    """log10 PR per layer, float64 [L+1]; NaN where PR is not a positive finite number."""
    fitted: np.ndarray
    """intercept + slope * l for judged layers, NaN before, float64 [L+1]."""
    deviation: np.ndarray
    """log10 PR_l - fitted_l for judged layers (> 0: above the line), float64 [L+1]."""
    step: np.ndarray
    """log10 PR_{l-1} - log10 PR_l for l >= first_layer + 1 (> 0: the layer lowers PR),
    float64 [L+1]."""
    pr_se: np.ndarray
    log10_pr_se: np.ndarray
    fitted_se: np.ndarray
    deviation_se: np.ndarray
    step_se: np.ndarray
    shards: int
    """Number of leave-one-out curves the standard errors come from (0 when none)."""

    @property
    def num_layers(self) -> int:
        """L: the index of the last hidden state."""
        return len(self.pr) - 1

    @property
    def judged_layers(self) -> range:
        """The layers the law is fitted on and judged at: first_layer..L."""
        return range(self.first_layer, self.num_layers + 1)

    def undefined_layers(self) -> tuple[int, ...]:
        """Judged layers whose PR is not a positive finite number (their log10 is
        NaN, and so is every fitted quantity)."""
        return tuple(l for l in self.judged_layers if not np.isfinite(self.log10_pr[l]))


def fit_law(values, first_layer: int = 1, leave_one_out=None) -> LawFit:
    """Fit the law of equi-learning to one PR value per layer.

    ``values``: PR per layer, shape [L+1] (index 0 = embedding output).
    ``first_layer``: the first judged layer f (default 1); the fit needs at least two
    judged layers, f <= L - 1.
    ``leave_one_out``: optional [g, L+1] array, row i = the PR curve recomputed with
    jackknife shard i left out (``LayerStats.leave_one_out``).

    With y_l = log10 PR_l over the judged layers l = f..L (n = L - f + 1 points),
    x̄ and ȳ their means, Sxx = Σ(l - x̄)², Sxy = Σ(l - x̄)(y_l - ȳ), Syy = Σ(y_l - ȳ)²:

    - slope = Sxy / Sxx,   intercept = ȳ - slope · x̄
    - pearson_r = Sxy / sqrt(Sxx · Syy)  (NaN when Syy = 0: a flat curve),
      r_squared = pearson_r²,   rho = 10**slope
    - mean_step = (y_f - y_L) / (L - f)  (the mean of the steps, telescoped)
    - fitted_l = intercept + slope · l,   deviation_l = y_l - fitted_l   (l = f..L)
    - step_l = y_{l-1} - y_l   (l = f+1..L; layer f has no step)

    Jackknife: every quantity θ above is recomputed on each leave-one-out curve,
    θ_1..θ_g, and its standard error is sqrt((g - 1)/g · Σ_i (θ_i - θ̄)²), θ̄ their
    mean.  With fewer than two curves every ``*_se`` is NaN.

    Non-finite input does not raise: a PR that is NaN, infinite or <= 0 gives a NaN
    log10, so the line and everything derived from it become NaN (steps and the mean
    step only where they involve that layer); the checks then fail and say why.
    Raises StatsError for a wrongly shaped input or fewer than two judged layers.
    """
    pr = np.asarray(values, dtype=np.float64)
    if pr.ndim != 1:
        raise StatsError(f"fit_law expects one PR value per layer (shape [L+1]), got shape {pr.shape}")
    if not isinstance(first_layer, (int, np.integer)) or first_layer < 0:
        raise StatsError(f"first_layer must be an integer >= 0, got {first_layer!r}")
    num_layers = len(pr) - 1
    if num_layers - first_layer + 1 < 2:
        raise StatsError(
            f"the law needs at least 2 layers to fit a line; got layers {first_layer}..{num_layers} "
            f"({len(pr)} PR values, first_layer={first_layer})")
    first_layer = int(first_layer)
    point = _fit_curve(pr, first_layer)

    loo = None
    if leave_one_out is not None:
        loo = np.asarray(leave_one_out, dtype=np.float64)
        if loo.ndim != 2 or loo.shape[1] != len(pr):
            raise StatsError(
                f"leave_one_out must have shape [shards, {len(pr)}] (one PR curve per shard "
                f"left out), got shape {loo.shape}")
    shards = 0 if loo is None else loo.shape[0]
    if shards >= 2:
        curves = [_fit_curve(row, first_layer) for row in loo]
        se = {key: jackknife_se(np.array([c[key] for c in curves])) for key in point}
    else:
        se = {key: np.full_like(np.asarray(val, dtype=np.float64), np.nan) for key, val in point.items()}

    fields = {}
    for key in _SCALARS:
        fields[key] = float(point[key])
        fields[key + "_se"] = float(se[key])
    for key in _ARRAYS:
        fields[key] = _frozen(point[key])
        fields[key + "_se"] = _frozen(se[key])
    return LawFit(first_layer=first_layer, shards=shards, **fields)


def _fit_curve(pr: np.ndarray, first: int) -> dict[str, np.ndarray | float]:
    """The fit of one PR curve [L+1] (already validated): scalars and [L+1] arrays."""
    size = len(pr)
    log10_pr = log10_or_nan(pr)

    x = np.arange(first, size, dtype=np.float64)
    y = log10_pr[first:]
    xc = x - x.mean()
    shifted = y - y[0]  # exact zeros for a flat curve, whatever the rounding of a mean
    yc = shifted - shifted.mean()
    sxx = float(xc @ xc)  # > 0: at least two distinct layer indices
    sxy = float(xc @ yc)
    syy = float(yc @ yc)
    slope = sxy / sxx
    intercept = float(y[0] + shifted.mean()) - slope * float(x.mean())
    if syy > 0:
        # Clip rounding past ±1 (a perfectly straight curve).
        pearson_r = float(np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0))
    else:
        pearson_r = np.nan  # flat (syy == 0) or non-finite (syy is NaN)

    fitted = np.full(size, np.nan)
    fitted[first:] = intercept + slope * x
    deviation = log10_pr - fitted  # NaN before first through fitted
    step = np.full(size, np.nan)
    step[first + 1:] = log10_pr[first:-1] - log10_pr[first + 1:]
    mean_step = (log10_pr[first] - log10_pr[-1]) / (size - 1 - first)
    return {
        "slope": slope, "intercept": intercept, "pearson_r": pearson_r,
        "r_squared": pearson_r ** 2, "rho": 10.0 ** slope, "mean_step": float(mean_step),
        "pr": pr.copy(), "log10_pr": log10_pr, "fitted": fitted, "deviation": deviation,
        "step": step,
    }


def _frozen(array) -> np.ndarray:
    out = np.array(array, dtype=np.float64)
    out.setflags(write=False)
    return out
