"""Paired per-layer drift of one checkpoint against a reference measured on the
same windows, and the checks that judge it.  Pure numpy on report data.

The reference of layer l is an interval [low_l, high_l] of log10 PR: a baseline's
own value (low = high), or the range spanned by the parent layers a merged layer
came from.  drift_l = now_l − clip(now_l, low_l, high_l): now − then for a
baseline, how far the layer lies outside the range for a merge (0 inside).  Its
standard error is paired: the same formula on each leave-one-shard-out curve of
both checkpoints, then the jackknife (:func:`audit.stats.jackknife.jackknife_se`).  The
sampling noise of the windows is shared, so a paired difference is far more
precise than either value.

A layer fails when its |drift| exceeds every tolerance that is set (``max_drift``
AND ``max_drift_sigma``, the rule of :func:`audit.checks.effect_and_sigma`);
``first_moved_layer`` is the first layer whose |drift| exceeds ``max_drift``
alone, whichever the sign: on a damaged checkpoint every layer before the damage
is bit-identical, so it names the damaged block even where the sigma is small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from audit.checks import CHECKS, CheckResult, effect_and_sigma
from audit.errors import ComparisonError
from audit.internal.plus_minus import plus_minus
from audit.report.data import DriftRow, Report
from audit.stats.jackknife import jackknife_se


@dataclass(frozen=True)
class Reference:
    """Per-layer reference values, index 0..L (index 0 unused)."""

    low: np.ndarray
    """float64 [L+1]: lowest reference log10 PR of each layer."""
    high: np.ndarray
    """float64 [L+1]: highest reference log10 PR (= low for a baseline)."""
    low_loo: np.ndarray
    """float64 [g, L+1]: ``low`` on each leave-one-shard-out curve."""
    high_loo: np.ndarray
    sources: tuple[str, ...] = ()
    """Per layer 0..L: where the reference came from, for the table ('' for a baseline)."""


def curve(report: Report) -> tuple[np.ndarray, np.ndarray]:
    """log10 PR [L+1] and its leave-one-shard-out curves [g, L+1] of a report."""
    log10 = np.array([row.log10_pr for row in report.layers], dtype=np.float64)
    loo = np.array([row.log10_pr_loo for row in report.layers], dtype=np.float64).T
    return log10, loo.reshape(len(report.shard_ids), len(report.layers))


def require_paired(now: Report, then: Report, what: str) -> None:
    """Both reports must carry per-shard values over the same shards."""
    if not then.shard_ids or not all(row.log10_pr_loo for row in then.layers):
        raise ComparisonError(f"{what} has no per-shard values (written before report schema "
                              f"3, or with probe.shards: 1): regenerate it")
    if now.shard_ids != then.shard_ids:
        raise ComparisonError(f"{what} was measured on shards {list(then.shard_ids)}, this run on "
                              f"{list(now.shard_ids)}: the paired drift needs the same shards",
                              fields=("shard_ids",))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_fits(now: Report, then: Report, what: str) -> None:
    """``then``, a report read from a file (a baseline), must fit the model measured
    now before any array is built from it: the same number of layers, numbers where
    numbers are compared, one leave-one-shard-out value per shard.  A report of
    another model or a hand-edited one is a :class:`ComparisonError` naming the first
    field that does not fit, never a numpy broadcast error.  ``fields`` names it."""
    def unfit(field: str, problem: str) -> ComparisonError:
        return ComparisonError(f"{what} does not fit this model: {field} {problem}; "
                               "regenerate it", fields=(field,))

    for key in ("spec", "probe", "corpus", "versions"):
        if not isinstance(getattr(then, key), dict):
            raise unfit(key, f"is {type(getattr(then, key)).__name__}, not a mapping")
    for key in ("probe", "corpus"):
        if key in then.spec and not isinstance(then.spec[key], dict):
            raise unfit(f"spec.{key}", "is not a mapping")
    if not isinstance(then.probe.get("tokenizer", {}), dict):
        raise unfit("probe.tokenizer", "is not a mapping")
    if len(then.layers) != len(now.layers):
        raise unfit("layers", f"describe {len(then.layers) - 1} layers, this model has "
                              f"{len(now.layers) - 1}")
    for key in ("pearson_r", "rho"):
        if not _is_number(getattr(then.law, key)):
            raise unfit(f"law.{key}", f"is {getattr(then.law, key)!r:.40}, not a number")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in then.shard_ids):
        raise unfit("shard_ids", "are not all integers")
    shards = len(then.shard_ids)
    for i, row in enumerate(then.layers):
        if row.index != i:
            raise unfit(f"layers[{i}].index", f"is {row.index!r:.40}, expected {i}")
        if not _is_number(row.log10_pr):
            raise unfit(f"layers[{i}].log10_pr", f"is {row.log10_pr!r:.40}, not a number")
        loo = row.log10_pr_loo
        if not isinstance(loo, (list, tuple)) or not all(map(_is_number, loo)):
            raise unfit(f"layers[{i}].log10_pr_loo", "is not a list of numbers")
        if len(loo) != shards:
            raise unfit(f"layers[{i}].log10_pr_loo", f"has {len(loo)} values for {shards} "
                                                     "shards")
    loss = then.loss
    if loss is not None and (not _is_number(loss.mean) or not isinstance(
            loss.leave_one_out, (list, tuple)) or not all(map(_is_number, loss.leave_one_out))):
        raise unfit("loss", "holds values that are not numbers")


def drift(now: Report, ref: Reference) -> tuple[np.ndarray, np.ndarray]:
    """Drift [L+1] and its paired jackknife standard error [L+1] (index 0 NaN)."""
    log10, loo = curve(now)
    value = log10 - np.clip(log10, ref.low, ref.high)
    per_shard = loo - np.clip(loo, ref.low_loo, ref.high_loo)
    se = jackknife_se(per_shard) if per_shard.shape[0] >= 2 else np.full(len(value), np.nan)
    value[0] = se[0] = np.nan
    return value, se


def first_moved_layer(values: np.ndarray, max_drift: float | None) -> int | None:
    """The first layer 1..L whose |drift| exceeds ``max_drift``; None when none does."""
    if max_drift is None:
        return None
    moved = [l for l in range(1, len(values)) if abs(values[l]) > max_drift]
    return moved[0] if moved else None


def judge_layers(now: Report, ref: Reference, check: str, max_drift: float | None,
                 max_sigma: float | None, keys: tuple[str, str] = ("max_drift", "max_drift_sigma"),
                 ) -> tuple[tuple[CheckResult, ...], tuple[DriftRow, ...], int | None]:
    """One ``check`` result per layer 1..L, the table rows, and the first moved layer.
    ``keys`` name the two tolerances in messages."""
    values, se = drift(now, ref)
    log10, _ = curve(now)
    results, rows = [], []
    for layer in range(1, len(values)):
        value, err = float(values[layer]), float(se[layer])
        source = ref.sources[layer] if ref.sources else ""
        what, short = CHECKS[check].words
        if math.isnan(value):
            passed, sigma, why = False, math.nan, "log10 PR is undefined here or in the reference"
        elif max_drift is None and max_sigma is None:
            continue
        else:
            passed, sigma, why = effect_and_sigma(value, err, max_drift, max_sigma, short, *keys)
        then = (f"{ref.low[layer]:.5f}" if ref.low[layer] == ref.high[layer]
                else f"[{ref.low[layer]:.5f}, {ref.high[layer]:.5f}]")
        shown = f"{value:+.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:+.2e}"
        message = (f"layer {layer}: {what} {shown}{plus_minus(err, '.2g')}"
                   + f" (log10 PR {then} → {log10[layer]:.5f}"
                   + (f" from {source}" if source else "") + f"): {why}")
        results.append(CheckResult(check, layer, value, err, max_drift, sigma, max_sigma, passed,
                                   False, message))
        moved = max_drift is not None and not math.isnan(value) and abs(value) > max_drift
        rows.append(DriftRow(layer=layer, now=float(log10[layer]), then_low=float(ref.low[layer]),
                             then_high=float(ref.high[layer]), drift=value, drift_se=err,
                             sigma=sigma, status="violation" if not passed else
                             ("moved" if moved else "ok"), sources=source))
    return tuple(results), tuple(rows), first_moved_layer(values, max_drift)


def increase_check(check: str, now: float, then: float, tolerance: float | None, what: str,
                   key: str, stderr: float = math.nan) -> CheckResult | None:
    """A law-level comparison: ``now`` may exceed ``then`` by at most ``tolerance``
    (None: not checked); NaN on either side fails."""
    if tolerance is None:
        return None
    increase = now - then
    if math.isnan(increase):
        return CheckResult(check, None, increase, stderr, tolerance, math.nan, None, False, False,
                           f"{what} is undefined now ({now!r}) or then ({then!r})")
    passed = increase <= tolerance
    message = (f"{what} {then:.5g} → {now:.5g}: {increase:+.3g}{plus_minus(stderr, '.2g')} "
               f"{'<=' if passed else '>'} {key} {tolerance!r}")
    return CheckResult(check, None, increase, stderr, tolerance, math.nan, None, passed, False,
                       message)


def largest(rows: tuple[DriftRow, ...]) -> tuple[float, int | None]:
    """The drift of largest magnitude and its layer (NaN, None without rows)."""
    finite = [r for r in rows if not math.isnan(r.drift)]
    if not finite:
        return math.nan, None
    top = max(finite, key=lambda r: abs(r.drift))
    return top.drift, top.layer


def attach(report: Report, comparison, checks: tuple[CheckResult, ...]) -> Report:
    """``report`` with a comparison and its checks added; the verdict fails when any
    check, the law's or a comparison's, is a violation."""
    import dataclasses

    all_checks = report.checks + tuple(checks)
    verdict = "fail" if any(c.violation for c in all_checks) else "pass"
    return dataclasses.replace(report, checks=all_checks, verdict=verdict,
                               comparisons=report.comparisons + (comparison,))


def loss_check(check: str, now: Report, loss_now: float, loss_then: float, se: float,
               tolerance: float | None, where: str, section: str = "baseline",
               ) -> CheckResult | None:
    """The loss check, or a failure saying why there is no loss to compare;
    ``section`` holds its ``max_loss_increase`` key."""
    if tolerance is None:
        return None
    if now.loss is None or loss_then != loss_then:
        why = (f"no probe loss in this run ({now.loss_note})" if now.loss is None
               else f"no probe loss in {where}")
        return CheckResult(check, None, float("nan"), float("nan"), tolerance, float("nan"), None,
                           False, False, f"probe loss: {why}; set {section}.max_loss_increase: "
                                         f"null to compare without it")
    key = "max_loss_increase" if section == "baseline" else f"{section}.max_loss_increase"
    return increase_check(check, loss_now, loss_then, tolerance, "probe loss (nats)", key, se)
