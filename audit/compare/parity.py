"""Parity: one checkpoint audited by two backends (``backend: [torch, onnx]``),
both measured on the same windows, must tell the same story.

Each backend after the first is compared with the first, layer by layer: the
difference of log10 PR (this backend's minus the reference's, with the paired
jackknife standard error of :mod:`audit.compare.drift`) must stay within
``parity.max_log10_pr_difference`` at every layer 1..L, and the probe losses within
``parity.max_loss_difference``.  When the session could run both backends' heads
on the probe windows (:func:`audit.compare.outputs.compare_outputs`), their
next-token distributions are compared too: the mean KL(reference ‖ this backend)
must stay within ``parity.max_kld_mean`` (check ``parity_kld``), and the figures
are kept as a ``backend:<reference>`` divergence row (reported, not gated by the
``divergence`` item).  Only the effect is judged, not its significance: two
backends of one checkpoint differ by rounding, which is not sampling noise.  Pure
numpy on report data.
"""

from __future__ import annotations

import dataclasses
import math

from audit.checks import CheckResult
from audit.compare.baseline import check_comparable
from audit.compare.drift import Reference, attach, curve, judge_layers, largest, require_paired
from audit.report.data import Comparison, DivergenceRow, Report
from audit.spec import ParitySpec


def compare_backends(now: Report, reference: Report, tolerances: ParitySpec,
                     divergence: DivergenceRow | None = None,
                     divergence_note: str | None = None) -> Report:
    """``now`` (one backend's report) with its parity against ``reference`` (the
    first backend's report of the same spec) attached as a ``parity`` comparison;
    with ``divergence`` (``now``'s next-token distribution against ``reference``'s,
    same windows) its ``parity_kld`` check and the row, or with ``divergence_note``
    (why there is none) a failed ``parity_kld`` check saying so."""
    report = agreement(now, reference, tolerances.max_log10_pr_difference,
                       tolerances.max_loss_difference, kind="parity", label=reference.backend,
                       labels=(reference.backend, now.backend),
                       checks=("parity_log10_pr", "parity_loss"),
                       keys=("parity.max_log10_pr_difference", "parity.max_loss_difference"))
    check = _kld_check(divergence, divergence_note, tolerances.max_kld_mean,
                       (reference.backend, now.backend))
    if check is None:
        return report
    checks = report.checks + (check,)
    return dataclasses.replace(
        report, checks=checks, verdict="fail" if any(c.violation for c in checks) else "pass",
        divergence=report.divergence + ((divergence,) if divergence is not None else ()))


def _kld_check(row: DivergenceRow | None, note: str | None, tolerance: float | None,
               labels: tuple[str, str]) -> CheckResult | None:
    key = "parity.max_kld_mean"
    if tolerance is None or (row is None and note is None):
        return None
    if row is None:
        return CheckResult("parity_kld", None, math.nan, math.nan, tolerance, math.nan, None,
                           False, False, f"next-token KL divergence: not measured ({note}); set "
                                         f"{key}: null to compare without it")
    r = row.result
    passed = r.kld_mean <= tolerance
    message = (f"next-token KL({labels[0]} ‖ {labels[1]}) over {r.tokens} tokens: mean "
               f"{r.kld_mean:.3g} ± {r.kld_mean_se:.2g} nats (99th percentile "
               f"{r.kld_p99:.3g}, same top {100 * r.same_top:.3f} %) "
               f"{'<=' if passed else '>'} {key} {tolerance!r}")
    return CheckResult("parity_kld", None, r.kld_mean, r.kld_mean_se, tolerance, math.nan, None,
                       passed, False, message)


def agreement(now: Report, reference: Report, max_difference: float | None,
              max_loss: float | None, *, kind: str, label: str, labels: tuple[str, str],
              checks: tuple[str, str], keys: tuple[str, str]) -> Report:
    """``now`` with its agreement with ``reference`` (the same checkpoint computed
    another way, on the same windows) attached as a comparison of ``kind`` named
    ``label``: the per-layer check ``checks[0]`` (|log10 PR difference| <=
    ``max_difference``) and the loss check ``checks[1]`` (|probe loss difference| <=
    ``max_loss``); ``labels`` name the reference and ``now`` in messages, ``keys``
    the two tolerances."""
    what = f"the {labels[0]} report {reference.name!r}"
    require_paired(now, reference, what)
    check_comparable(now, reference, what)
    log10, loo = curve(reference)
    ref = Reference(low=log10, high=log10, low_loo=loo, high_loo=loo)
    layer_checks, rows, moved = judge_layers(now, ref, checks[0], max_difference, None,
                                             keys=(keys[0], ""))
    loss_now = now.loss.mean if now.loss else math.nan
    loss_then = reference.loss.mean if reference.loss else math.nan
    loss = _loss_check(now, reference, loss_now, loss_then, max_loss, checks[1], keys[1], labels)
    top, top_layer = largest(rows)
    comparison = Comparison(
        kind=kind, reference=label,
        pearson_r_then=reference.law.pearson_r, pearson_r_now=now.law.pearson_r,
        rho_then=reference.law.rho, rho_now=now.law.rho, loss_then=loss_then, loss_now=loss_now,
        first_moved_layer=moved, largest_drift=top, largest_drift_layer=top_layer, rows=rows)
    return attach(now, comparison, ((loss,) if loss is not None else ()) + layer_checks)


def _loss_check(now: Report, reference: Report, loss_now: float, loss_then: float,
                tolerance: float | None, check: str, key: str,
                labels: tuple[str, str]) -> CheckResult | None:
    if tolerance is None:
        return None
    if math.isnan(loss_now) or math.isnan(loss_then):
        sides = ((labels[0], reference, loss_then), (labels[1], now, loss_now))
        missing = [f"{label} ({r.loss_note or 'no probe loss'})"
                   for label, r, v in sides if math.isnan(v)]
        return CheckResult(check, None, math.nan, math.nan, tolerance, math.nan, None,
                           False, False, f"probe loss: missing in {', '.join(missing)}; set "
                                         f"{key}: null to compare without it")
    difference = loss_now - loss_then
    passed = abs(difference) <= tolerance
    message = (f"probe loss (nats) {labels[0]} {loss_then:.6f}, {labels[1]} "
               f"{loss_now:.6f}: |difference| {abs(difference):.3g} "
               f"{'<=' if passed else '>'} {key} {tolerance!r}")
    return CheckResult(check, None, difference, math.nan, tolerance, math.nan, None,
                       passed, False, message)
