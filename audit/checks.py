"""Thresholds of the law turned into verdicts, as data.

``evaluate(fit, law)`` compares a :class:`audit.law.LawFit` with the thresholds of a
:class:`audit.spec.LawSpec` and returns a :class:`Verdict`: one :class:`CheckResult`
per check that is switched on, at law level (``pearson_r``, ``rho``) and per judged
layer (``deviation``, ``step``).  Nothing is printed or asserted here; the pytest
layer and the report renderers read the results.  :data:`CHECKS` is the one table
of every check's name, item and kind, the comparisons' included.

Rules (docs/method.md, "Definitions every part of the code shares"):

- pearson_r passes iff r <= max_pearson_r; rho passes iff lo <= rho <= hi.
- deviation (layers first..L): the layer fails iff every threshold that is set is
  exceeded: (|dev| > max_deviation) AND (|dev| / se > max_deviation_sigma).  An
  unknown standard error (NaN: no jackknife shards) cannot vouch for the layer, so
  the sigma condition then counts as exceeded and the message says so.
- step (layers first+1..L): passes iff step_l >= min_step_fraction * |mean step|.
  The absolute value keeps the threshold pointing at the layers that lose most even
  when the mean step is <= 0 (then the law-level checks fail on their own).
- A NaN value or threshold never passes; the message says why it is NaN.
- Layers in ``expected_deviations`` are checked like the others; their failures are
  marked ``expected`` (pytest xfail) instead of being violations.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from audit.errors import StatsError
from audit.internal.plus_minus import plus_minus
from audit.law import LawFit
from audit.spec import LawSpec

LAYER_ITEM = "layer-NN"
"""The ``item`` of a check judged in every layer's own item (``layer-07``)."""


@dataclass(frozen=True)
class Check:
    """One check: its name (``CheckResult.check``), the pytest item that covers its
    results, the comparison it belongs to, and how its results are counted."""

    name: str
    item: str
    """The pytest item (``law-fit``, ``baseline-loss``, ...), or :data:`LAYER_ITEM`:
    the check has one result per layer, each in that layer's item."""
    kind: str
    """``law`` (the law's own thresholds), or the comparison that makes it
    (``Comparison.kind``): ``baseline``, ``merge``, ``parity``, ``adapter`` or
    ``adapter-merged``."""
    per_layer: bool
    """One result per layer (``CheckResult.layer`` set), else one per model."""
    evidence: str | None = None
    """What a mutant caught by it is counted under in the mutation report
    (:data:`EVIDENCE`); None for a check that mutants are never judged by."""
    words: tuple[str, str] | None = None
    """A per-layer comparison: how messages name its quantity (long, short)."""
    title: str = ""
    """What the check judges, in words (the report's list of failing checks)."""


CHECKS: dict[str, Check] = {check.name: check for check in (
    Check("pearson_r", "law-fit", "law", False, "law",
          title="the law's fit (Pearson r)"),
    Check("rho", "law-rho", "law", False, "law",
          title="the decay ratio ρ"),
    Check("deviation", LAYER_ITEM, "law", True, "law",
          title="deviation from the fitted line"),
    Check("step", LAYER_ITEM, "law", True, "law",
          title="step from the previous layer"),
    Check("baseline_pearson_r", "baseline-law", "baseline", False, "law",
          title="Pearson r against the baseline"),
    Check("baseline_rho", "baseline-law", "baseline", False, "law",
          title="ρ against the baseline"),
    Check("baseline_loss", "baseline-loss", "baseline", False, "loss",
          title="probe loss against the baseline"),
    Check("drift", LAYER_ITEM, "baseline", True, "drift", ("drift", "drift"),
          title="drift from the baseline"),
    Check("merge_pearson_r", "merge-law", "merge", False, "law",
          title="Pearson r against the parents"),
    Check("merge_rho", "merge-law", "merge", False, "law",
          title="ρ against the parents"),
    Check("merge_loss", "merge-loss", "merge", False, "loss",
          title="probe loss against the parents"),
    Check("merge_drift", LAYER_ITEM, "merge", True, "drift",
          ("distance outside the parents' range", "drift"),
          title="distance outside the parents' range"),
    Check("parity_loss", "parity", "parity", False,
          title="probe loss across backends"),
    Check("parity_log10_pr", "parity", "parity", True, None,
          ("log10 PR difference", "difference"),
          title="log10 PR across backends"),
    Check("parity_kld", "parity", "parity", False,
          title="next-token KL divergence across backends"),
    Check("adapter_pearson_r", "adapter-law", "adapter", False,
          title="Pearson r against the base"),
    Check("adapter_rho", "adapter-law", "adapter", False,
          title="ρ against the base"),
    Check("adapter_loss", "adapter-loss", "adapter", False,
          title="probe loss against the base (forgetting)"),
    Check("adapter_drift", LAYER_ITEM, "adapter", True, None, ("drift from the base", "drift"),
          title="drift from the base"),
    Check("adapter_merged_loss", "adapter-merged-parity", "adapter-merged", False,
          title="probe loss, merged or not"),
    Check("adapter_merged_log10_pr", "adapter-merged-parity", "adapter-merged", True, None,
          ("log10 PR difference from the merge", "difference"),
          title="log10 PR, merged or not"),
    Check("divergence", "divergence", "divergence", False, "divergence",
          title="next-token distribution (KLD, same top, Δp)"),
)}
"""Every check, the law's first, then the comparisons' (baseline, merge, parity,
an adapter against its base and against its merge, the next-token divergence): the
one table the plugin, the session, the mutation report and the messages read.
``divergence`` judges the next-token distribution against the reference model or
the stored baseline's token record (:mod:`audit.compare.output_gate`)."""
KINDS = ("law", "baseline", "merge", "parity", "adapter", "adapter-merged", "divergence")
"""``Check.kind``, in the order of :data:`CHECKS`."""


def check_title(name: str) -> str:
    """The check ``name`` in words (:attr:`Check.title`); an unknown name as it is."""
    check = CHECKS.get(name)
    return check.title if check is not None else name
EVIDENCE = ("law", "drift", "loss", "divergence")
"""What can catch a mutant, in the mutation report's order: the law's own checks on
the mutant or its r and ρ against the unmutated model; the per-layer drift; the
probe loss; the next-token divergence from the unmutated model."""


def items_of(kind: str) -> tuple[str, ...]:
    """The items of the checks of one kind, in table order, without the layer items:
    ``items_of("law")`` is ``("law-fit", "law-rho")``."""
    return tuple(dict.fromkeys(check.item for check in CHECKS.values()
                               if check.kind == kind and check.item != LAYER_ITEM))


def comparison_kind(check: str) -> str | None:
    """``baseline``, ``merge`` or ``parity`` for a comparison's check; None for the
    law's (and for a name that is no check)."""
    record = CHECKS.get(check)
    return None if record is None or record.kind == "law" else record.kind


@dataclass(frozen=True)
class CheckResult:
    """One check of one threshold: at law level (``layer`` None) or at one layer."""

    check: str
    """A name in :data:`CHECKS`: ``pearson_r`` | ``rho`` (law level) | ``deviation`` |
    ``step`` (per layer) for the law's own."""
    layer: int | None
    """The layer judged, or None for a law-level check."""
    value: float
    """The measured quantity: r, rho, the signed deviation, or the step (log10 PR)."""
    stderr: float
    """Jackknife standard error of ``value``; NaN when unknown."""
    threshold: float | tuple[float, float] | None
    """pearson_r: max_pearson_r; rho: (lo, hi); deviation: max_deviation (None when
    only the sigma threshold is set); step: min_step_fraction * |mean step|, in log10
    PR (NaN when the mean step is undefined)."""
    sigma: float
    """deviation only: |value| / stderr (0 when value is 0, NaN when unknown); NaN for
    other checks."""
    sigma_threshold: float | None
    """deviation only: max_deviation_sigma, or None."""
    passed: bool
    expected: bool
    """The layer is declared in ``expected_deviations`` (always False at law level)."""
    message: str
    """One line: the value, its standard error, the comparison and the threshold."""

    @property
    def violation(self) -> bool:
        """Failed, and not declared as an expected deviation."""
        return not self.passed and not self.expected


@dataclass(frozen=True)
class Verdict:
    """Every check result of one law fit, law level first, then layer by layer."""

    results: tuple[CheckResult, ...]

    def layer_results(self, layer: int) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.layer == layer)

    @property
    def violations(self) -> tuple[CheckResult, ...]:
        """Failed checks that were not declared as expected."""
        return tuple(r for r in self.results if r.violation)

    @property
    def expected_failures(self) -> tuple[CheckResult, ...]:
        """Failed checks of layers declared in ``expected_deviations`` (xfail)."""
        return tuple(r for r in self.results if not r.passed and r.expected)

    @property
    def passed(self) -> bool:
        """True when there is no violation (expected failures do not count)."""
        return not self.violations

    def layer_status(self, layer: int) -> str:
        """``violation`` when a check of the layer failed and the layer is not
        declared; ``expected`` when a check failed and the layer is declared;
        ``ok`` otherwise, including a declared layer whose checks all pass (pytest
        shows it as XPASS) and a layer with no check switched on.  The status says
        what was measured, not what was declared.
        """
        failed = [r for r in self.layer_results(layer) if not r.passed]
        if not failed:
            return "ok"
        return "expected" if failed[0].expected else "violation"


def evaluate(fit: LawFit, law: LawSpec) -> Verdict:
    """Judge ``fit`` against the thresholds of ``law``; a threshold set to None
    produces no result.  See the module docstring for the rules."""
    expected = frozenset(int(l) for l in law.expected_deviations)
    results: list[CheckResult] = []
    if law.max_pearson_r is not None:
        results.append(_check_pearson_r(fit, float(law.max_pearson_r)))
    if law.rho is not None:
        lo, hi = law.rho
        results.append(_check_rho(fit, float(lo), float(hi)))
    for layer in fit.judged_layers:
        flagged = layer in expected
        if law.max_deviation is not None or law.max_deviation_sigma is not None:
            results.append(_check_deviation(fit, layer, law.max_deviation,
                                            law.max_deviation_sigma, flagged))
        if law.min_step_fraction is not None and layer > fit.first_layer:
            results.append(_check_step(fit, layer, float(law.min_step_fraction), flagged))
    return Verdict(tuple(results))


def layer_item_name(layer: int, num_layers: int | None = None) -> str:
    """The pytest item name of a layer: ``layer-NN``, zero-padded to at least two
    digits, or to the width of ``num_layers`` when given (``layer-007`` of 120)."""
    digits = max(2, len(str(num_layers))) if num_layers is not None else 2
    return f"layer-{layer:0{digits}d}"


def item_names(num_layers: int, first_layer: int = 1) -> tuple[str, ...]:
    """Every item of a model with hidden states 0..num_layers: ``law-fit``,
    ``law-rho``, then ``layer-NN`` for each judged layer."""
    return items_of("law") + tuple(layer_item_name(l, num_layers)
                                      for l in range(first_layer, num_layers + 1))


_LAYER_ITEM = re.compile(r"layer-(\d+)")


def item_results(verdict: Verdict | Iterable[CheckResult], item_name: str) -> tuple[CheckResult, ...]:
    """The results a pytest item covers: ``law-fit`` (pearson_r), ``law-rho`` (rho),
    or ``layer-NN`` (every check of layer NN, whatever its zero padding).  Accepts a
    Verdict or its results (e.g. ``Report.checks``).  Empty when those checks are off."""
    results = verdict.results if isinstance(verdict, Verdict) else tuple(verdict)
    named = {kind: items_of(kind) for kind in KINDS}
    if any(item_name in items for items in named.values()):
        return tuple(r for r in results if CHECKS[r.check].item == item_name)
    match = _LAYER_ITEM.fullmatch(item_name)
    if match:
        layer = int(match.group(1))
        return tuple(r for r in results
                     if r.layer == layer and CHECKS[r.check].item == LAYER_ITEM)
    raise StatsError(f"unknown audit item {item_name!r}: expected one of "
                     f"{', '.join(item for items in named.values() for item in items)} "
                     f"or {LAYER_ITEM}")


# --- the checks ---------------------------------------------------------------

def _check_pearson_r(fit: LawFit, threshold: float) -> CheckResult:
    r, se = fit.pearson_r, fit.pearson_r_se
    if math.isnan(r):
        passed = False
        message = f"pearson_r NaN: {_why_fit_undefined(fit)}; max_pearson_r {threshold!r}"
    else:
        passed = r <= threshold
        message = (f"pearson_r {r:.4f}{plus_minus(se, '.2g')} {'<=' if passed else '>'} "
                   f"max_pearson_r {threshold!r}")
    return CheckResult("pearson_r", None, r, se, threshold, math.nan, None, passed, False, message)


def _check_rho(fit: LawFit, lo: float, hi: float) -> CheckResult:
    rho, se = fit.rho, fit.rho_se
    bounds = f"[{lo!r}, {hi!r}]"
    if math.isnan(rho):
        passed = False
        message = f"rho NaN: {_why_fit_undefined(fit)}; range {bounds}"
    else:
        passed = lo <= rho <= hi
        message = f"rho {rho:.5f}{plus_minus(se, '.2g')} {'in' if passed else 'outside'} {bounds}"
    return CheckResult("rho", None, rho, se, (lo, hi), math.nan, None, passed, False, message)


def _check_deviation(fit: LawFit, layer: int, max_deviation: float | None,
                     max_sigma: float | None, expected: bool) -> CheckResult:
    dev = float(fit.deviation[layer])
    se = float(fit.deviation_se[layer])
    max_deviation = None if max_deviation is None else float(max_deviation)
    max_sigma = None if max_sigma is None else float(max_sigma)
    head = f"layer {layer}: deviation"
    if math.isnan(dev):
        return CheckResult("deviation", layer, dev, se, max_deviation, sigma_of(dev, se), max_sigma,
                           False, expected, f"{head} NaN: {_why_fit_undefined(fit)}")
    passed, sigma, deciding = effect_and_sigma(dev, se, max_deviation, max_sigma,
                                               "deviation", "max_deviation", "max_deviation_sigma")
    message = f"{head} {dev:+.3g}{plus_minus(se, '.2g')}: {deciding}"
    return CheckResult("deviation", layer, dev, se, max_deviation, sigma, max_sigma, passed,
                       expected, message)


def sigma_of(value: float, se: float) -> float:
    """|value| / se: 0 when value is 0 (whatever the noise), inf when se is 0, NaN
    when either is unknown."""
    if value == 0.0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.abs(np.float64(value)) / np.float64(se))


def effect_and_sigma(value: float, se: float, max_effect: float | None, max_sigma: float | None,
                     name: str, effect_key: str, sigma_key: str) -> tuple[bool, float, str]:
    """The rule shared by every check with an effect and a significance threshold
    (METHOD: combined with AND): fails iff each threshold that is set is exceeded,
    |value| > max_effect and |value| / se > max_sigma; an unknown se counts as
    beyond max_sigma.  Returns (passed, sigma, the clauses that decided, joined)."""
    sigma = sigma_of(value, se)
    clauses: list[tuple[bool, str]] = []
    if max_effect is not None:
        over = abs(value) > max_effect
        clauses.append((over, f"|{name}| {abs(value):.3g} {'>' if over else '<='} "
                              f"{effect_key} {max_effect!r}"))
    if max_sigma is not None:
        if math.isnan(sigma):
            clauses.append((True, f"standard error unknown, counted as beyond "
                                  f"{sigma_key} {max_sigma!r}"))
        else:
            over = sigma > max_sigma
            clauses.append((over, f"{sigma:.3g} σ {'>' if over else '<='} {sigma_key} {max_sigma!r}"))
    passed = not all(over for over, _ in clauses)
    return passed, sigma, " and ".join(text for over, text in clauses if over != passed)


def _check_step(fit: LawFit, layer: int, fraction: float, expected: bool) -> CheckResult:
    step = float(fit.step[layer])
    se = float(fit.step_se[layer])
    threshold = fraction * abs(fit.mean_step) + 0.0  # + 0.0: no "-0" in messages
    head = f"layer {layer}: step"
    rule = f"{fraction!r} × |mean step|"
    if math.isnan(step):
        undefined = [l for l in (layer - 1, layer) if math.isnan(fit.log10_pr[l])]
        message = f"{head} NaN: {_why_pr_undefined(fit, undefined)}"
        passed = False
    elif math.isnan(threshold):
        message = (f"{head} {step:.3g}{plus_minus(se, '.2g')}, threshold {rule} is NaN: the mean "
                   f"step is undefined ({_why_pr_undefined(fit, fit.undefined_layers())})")
        passed = False
    else:
        passed = step >= threshold
        message = (f"{head} {step:.3g}{plus_minus(se, '.2g')} {'>=' if passed else '<'} "
                   f"{rule} = {threshold:.3g}")
    return CheckResult("step", layer, step, se, threshold, math.nan, None, passed, expected, message)


# --- messages -----------------------------------------------------------------

def _why_fit_undefined(fit: LawFit) -> str:
    undefined = fit.undefined_layers()
    if undefined:
        return _why_pr_undefined(fit, undefined)
    return "the curve is flat (log10 PR has zero variance over the judged layers)"


def _why_pr_undefined(fit: LawFit, layers) -> str:
    layers = list(layers)
    if not layers:
        return "undefined"
    values = ", ".join(f"{l} (PR {float(fit.pr[l])!r})" for l in layers)
    noun = "layer" if len(layers) == 1 else "layers"
    return f"PR is not a positive finite number at {noun} {values}"
