"""Thresholds to verdicts: boundaries, the AND of effect and significance, NaN never
passing, expected deviations, exact messages, and the pytest item mapping."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from audit.checks import (
    CHECKS,
    KINDS,
    LAYER_ITEM,
    CheckResult,
    Verdict,
    check_title,
    comparison_kind,
    evaluate,
    item_names,
    item_results,
    items_of,
    layer_item_name,
)
from audit.errors import StatsError
from audit.law import LawFit, fit_law
from audit.spec import LawSpec

NAN = math.nan


def kinked_fit(**overrides) -> LawFit:
    """log10 PR_1..4 = 0, -0.1, -0.2, -0.1: slope -0.04, intercept 0, r = -0.632,
    deviations +0.04, -0.02, -0.08, +0.06, steps (l = 2..4) 0.1, 0.1, -0.1,
    mean step 0.1/3.  Standard errors are set by hand (``overrides``)."""
    fit = fit_law(np.array([2.0, 1.0, 10 ** -0.1, 10 ** -0.2, 10 ** -0.1]))
    defaults = dict(pearson_r_se=0.02, rho_se=0.0005,
                    deviation_se=np.array([NAN, 0.01, 0.01, 0.01, 0.05]),
                    step_se=np.array([NAN, NAN, 0.002, 0.002, 0.002]))
    defaults.update(overrides)
    return dataclasses.replace(fit, **defaults)


def only(verdict: Verdict, check: str, layer: int | None = None) -> CheckResult:
    found = [r for r in verdict.results if r.check == check and r.layer == layer]
    assert len(found) == 1, found
    return found[0]


# --- law level ------------------------------------------------------------------

def test_pearson_r_boundary_is_inclusive():
    fit = kinked_fit()
    assert only(evaluate(fit, LawSpec(max_pearson_r=fit.pearson_r)), "pearson_r").passed
    below = np.nextafter(fit.pearson_r, -1.0)
    assert not only(evaluate(fit, LawSpec(max_pearson_r=below)), "pearson_r").passed


def test_pearson_r_result_and_message():
    result = only(evaluate(kinked_fit(), LawSpec(max_pearson_r=-0.93)), "pearson_r")
    assert result.message == "pearson_r -0.6325 ± 0.02 > max_pearson_r -0.93"
    assert not result.passed and result.violation and not result.expected
    assert result.layer is None and result.threshold == -0.93 and result.stderr == 0.02
    assert result.value == pytest.approx(-0.2 / math.sqrt(0.1))
    assert math.isnan(result.sigma) and result.sigma_threshold is None

    passing = only(evaluate(kinked_fit(pearson_r_se=NAN), LawSpec(max_pearson_r=-0.5)), "pearson_r")
    assert passing.passed and passing.message == "pearson_r -0.6325 <= max_pearson_r -0.5"


@pytest.mark.parametrize("lo, hi, passed", [
    (0.9, 1.0, True),
    (10 ** -0.04, 1.0, True),     # lower bound inclusive
    (0.5, 10 ** -0.04, True),     # upper bound inclusive
    (0.95, 1.0, False),
    (0.5, 0.9, False),
])
def test_rho_range(lo, hi, passed):
    result = only(evaluate(kinked_fit(), LawSpec(rho=(lo, hi))), "rho")
    assert result.passed is passed
    assert result.threshold == (lo, hi)


def test_rho_messages():
    fit = kinked_fit()
    assert only(evaluate(fit, LawSpec(rho=(0.9, 1.0))), "rho").message == \
        "rho 0.91201 ± 0.0005 in [0.9, 1.0]"
    assert only(evaluate(fit, LawSpec(rho=[0.95, 1.0])), "rho").message == \
        "rho 0.91201 ± 0.0005 outside [0.95, 1.0]"


def test_thresholds_set_to_none_give_no_result():
    verdict = evaluate(kinked_fit(), LawSpec())
    assert verdict.results == ()
    assert verdict.passed
    assert [r.check for r in evaluate(kinked_fit(), LawSpec(rho=(0.9, 1.0))).results] == ["rho"]


def test_flat_curve_fails_law_checks_with_the_reason():
    fit = fit_law(np.full(5, 0.5))
    verdict = evaluate(fit, LawSpec(max_pearson_r=-0.93, rho=(0.9, 1.0)))
    r = only(verdict, "pearson_r")
    assert not r.passed and math.isnan(r.value)
    assert r.message == ("pearson_r NaN: the curve is flat (log10 PR has zero variance over "
                         "the judged layers); max_pearson_r -0.93")
    # rho of a flat curve is 1: defined, and inside this range.
    assert only(verdict, "rho").passed
    # A NaN r fails even a threshold that every number would pass.
    assert not only(evaluate(fit, LawSpec(max_pearson_r=math.inf)), "pearson_r").passed


def test_non_finite_pr_fails_every_check_it_enters():
    pr = np.array([2.0, 1.0, 0.0, 10 ** -0.2, 10 ** -0.1])
    law = LawSpec(max_pearson_r=1.0, rho=(0.0, math.inf), max_deviation=1.0,
                  max_deviation_sigma=100.0, min_step_fraction=-100.0)
    verdict = evaluate(fit_law(pr), law)
    why = "PR is not a positive finite number at layer 2 (PR 0.0)"
    assert only(verdict, "pearson_r").message == f"pearson_r NaN: {why}; max_pearson_r 1.0"
    assert only(verdict, "rho").message == f"rho NaN: {why}; range [0.0, inf]"
    for layer in (1, 2, 3, 4):
        result = only(verdict, "deviation", layer)
        assert not result.passed and result.message == f"layer {layer}: deviation NaN: {why}"
    assert only(verdict, "step", 2).message == f"layer 2: step NaN: {why}"
    assert not only(verdict, "step", 3).passed
    assert only(verdict, "step", 4).passed  # layers 3 and 4 are fine: step 4 is defined
    assert [r.check for r in verdict.violations] == [
        "pearson_r", "rho", "deviation", "deviation", "step", "deviation", "step", "deviation"]


# --- deviation: effect AND significance ----------------------------------------------

# Layer 3: deviation -0.08 ± 0.01, i.e. 8 standard errors.
@pytest.mark.parametrize("max_deviation, max_sigma, passed", [
    (0.05, 6.0, False),   # far and significant: flagged
    (0.05, 10.0, True),   # far but within its noise
    (0.1, 6.0, True),     # significant but small
    (0.1, 10.0, True),    # neither
    (0.05, None, False),  # effect alone
    (0.1, None, True),
    (None, 6.0, False),   # significance alone
    (None, 10.0, True),
])
def test_deviation_combines_effect_and_sigma_with_and(max_deviation, max_sigma, passed):
    law = LawSpec(max_deviation=max_deviation, max_deviation_sigma=max_sigma)
    result = only(evaluate(kinked_fit(), law), "deviation", 3)
    assert result.passed is passed
    assert result.value == pytest.approx(-0.08)
    assert result.sigma == pytest.approx(8.0)
    assert result.threshold == max_deviation and result.sigma_threshold == max_sigma


def test_deviation_messages_name_the_deciding_conditions():
    def message(max_deviation, max_sigma):
        law = LawSpec(max_deviation=max_deviation, max_deviation_sigma=max_sigma)
        return only(evaluate(kinked_fit(), law), "deviation", 3).message

    assert message(0.05, 6) == ("layer 3: deviation -0.08 ± 0.01: |deviation| 0.08 > max_deviation "
                                "0.05 and 8 σ > max_deviation_sigma 6.0")
    assert message(0.05, 10) == "layer 3: deviation -0.08 ± 0.01: 8 σ <= max_deviation_sigma 10.0"
    assert message(0.1, 6) == "layer 3: deviation -0.08 ± 0.01: |deviation| 0.08 <= max_deviation 0.1"
    assert message(0.1, 10) == ("layer 3: deviation -0.08 ± 0.01: |deviation| 0.08 <= max_deviation "
                                "0.1 and 8 σ <= max_deviation_sigma 10.0")


def test_deviation_boundaries_are_inclusive():
    fit = kinked_fit()
    dev = abs(float(fit.deviation[3]))
    assert only(evaluate(fit, LawSpec(max_deviation=dev)), "deviation", 3).passed
    assert not only(evaluate(fit, LawSpec(max_deviation=np.nextafter(dev, 0))), "deviation", 3).passed
    sigma = only(evaluate(fit, LawSpec(max_deviation_sigma=1.0)), "deviation", 3).sigma
    assert only(evaluate(fit, LawSpec(max_deviation_sigma=sigma)), "deviation", 3).passed


def test_unknown_standard_error_cannot_vouch_for_a_layer():
    fit = kinked_fit(deviation_se=np.full(5, NAN))
    alone = only(evaluate(fit, LawSpec(max_deviation_sigma=6.0)), "deviation", 1)
    assert not alone.passed and math.isnan(alone.sigma) and math.isnan(alone.stderr)
    assert alone.message == ("layer 1: deviation +0.04: standard error unknown, counted as "
                             "beyond max_deviation_sigma 6.0")
    # With an effect threshold too, the effect decides.
    both = evaluate(fit, LawSpec(max_deviation=0.05, max_deviation_sigma=6.0))
    assert [only(both, "deviation", l).passed for l in (1, 2, 3, 4)] == [True, True, False, False]


def test_zero_standard_error():
    fit = kinked_fit(deviation_se=np.array([NAN, 0.0, 0.0, 0.0, 0.0]))
    result = only(evaluate(fit, LawSpec(max_deviation_sigma=1e9)), "deviation", 2)
    assert result.sigma == math.inf and not result.passed
    # A point exactly on the line is 0 σ away, whatever its noise.
    on_line = kinked_fit(deviation=np.array([NAN, 0.0, 0.0, 0.0, 0.0]))
    assert only(evaluate(on_line, LawSpec(max_deviation_sigma=0.0)), "deviation", 2).sigma == 0.0


def test_deviation_checks_every_judged_layer_only():
    verdict = evaluate(kinked_fit(), LawSpec(max_deviation=0.05))
    assert [r.layer for r in verdict.results] == [1, 2, 3, 4]
    verdict = evaluate(fit_law(np.array([2.0, 1.0, 10 ** -0.1, 10 ** -0.2, 10 ** -0.1]), first_layer=2),
                       LawSpec(max_deviation=0.05))
    assert [r.layer for r in verdict.results] == [2, 3, 4]


# --- step ---------------------------------------------------------------------------

def test_step_results_and_messages():
    verdict = evaluate(kinked_fit(), LawSpec(min_step_fraction=0.5))
    assert [r.layer for r in verdict.results] == [2, 3, 4]  # layer 1 has no step
    four = only(verdict, "step", 4)
    assert not four.passed and four.value == pytest.approx(-0.1)
    assert four.threshold == pytest.approx(0.5 * 0.1 / 3)
    assert four.message == "layer 4: step -0.1 ± 0.002 < 0.5 × |mean step| = 0.0167"
    assert only(verdict, "step", 2).message == "layer 2: step 0.1 ± 0.002 >= 0.5 × |mean step| = 0.0167"


def test_step_boundary_is_inclusive():
    fit = kinked_fit(mean_step=0.01, step=np.array([NAN, NAN, 0.005, np.nextafter(0.005, 0), 0.1]))
    verdict = evaluate(fit, LawSpec(min_step_fraction=0.5))
    assert [r.passed for r in verdict.results] == [True, False, True]


@pytest.mark.parametrize("fraction, step, passed", [
    (-3.0, -0.02, True),    # threshold -3 × |-0.01| = -0.03
    (-3.0, -0.04, False),
    (0.5, 0.004, False),    # threshold +0.005: the absolute value keeps the sign of the fraction
    (0.5, 0.006, True),
])
def test_non_positive_mean_step_uses_its_absolute_value(fraction, step, passed):
    fit = kinked_fit(mean_step=-0.01, step=np.array([NAN, NAN, step, 0.1, 0.1]))
    result = only(evaluate(fit, LawSpec(min_step_fraction=fraction)), "step", 2)
    assert result.passed is passed
    assert result.threshold == pytest.approx(fraction * 0.01)


def test_zero_mean_step_has_no_negative_zero_threshold():
    fit = kinked_fit(mean_step=0.0, step_se=np.full(5, NAN))
    result = only(evaluate(fit, LawSpec(min_step_fraction=-3.0)), "step", 4)
    assert result.message == "layer 4: step -0.1 < -3.0 × |mean step| = 0"
    assert not result.passed


def test_nan_step_or_mean_step_never_passes():
    fit = kinked_fit(step=np.array([NAN, NAN, NAN, 0.1, 0.1]))
    result = only(evaluate(fit, LawSpec(min_step_fraction=-math.inf)), "step", 2)
    assert not result.passed
    fit = kinked_fit(mean_step=NAN)
    result = only(evaluate(fit, LawSpec(min_step_fraction=-3.0)), "step", 3)
    assert not result.passed and math.isnan(result.threshold)
    assert result.message.startswith("layer 3: step 0.1 ± 0.002, threshold -3.0 × |mean step| is "
                                     "NaN: the mean step is undefined")


# --- expected deviations and the verdict ---------------------------------------------

def law_with_expected(*layers) -> LawSpec:
    return LawSpec(max_pearson_r=-0.5, max_deviation=0.05, max_deviation_sigma=6.0,
                   min_step_fraction=0.0, expected_deviations=layers)


def test_expected_layers_fail_without_violating():
    verdict = evaluate(kinked_fit(), law_with_expected())
    assert not verdict.passed
    assert [(r.check, r.layer) for r in verdict.violations] == [("deviation", 3), ("step", 4)]
    assert [verdict.layer_status(l) for l in (1, 2, 3, 4)] == ["ok", "ok", "violation", "violation"]

    verdict = evaluate(kinked_fit(), law_with_expected(3, 4))
    assert verdict.passed and verdict.violations == ()
    assert [(r.check, r.layer) for r in verdict.expected_failures] == [("deviation", 3), ("step", 4)]
    assert [verdict.layer_status(l) for l in (1, 2, 3, 4)] == ["ok", "ok", "expected", "expected"]
    assert all(r.expected for r in verdict.layer_results(3))


def test_declared_layer_that_conforms_is_ok():
    verdict = evaluate(kinked_fit(), law_with_expected(2, 3, 4))
    assert verdict.layer_status(2) == "ok"
    assert all(r.passed and r.expected for r in verdict.layer_results(2))
    assert verdict.passed
    # Law-level checks are never expected.
    assert not only(verdict, "pearson_r").expected


def test_verdict_helpers():
    verdict = evaluate(kinked_fit(), law_with_expected(4))
    assert [r.check for r in verdict.layer_results(3)] == ["deviation", "step"]
    assert [r.check for r in verdict.layer_results(1)] == ["deviation"]
    assert verdict.layer_results(0) == ()
    assert verdict.layer_status(0) == "ok"


# --- pytest items ----------------------------------------------------------------------

def test_the_table_of_checks():
    assert [items_of(kind) for kind in KINDS] == [
        ("law-fit", "law-rho"), ("baseline-law", "baseline-loss"), ("merge-law", "merge-loss"),
        ("parity",), ("adapter-law", "adapter-loss"), ("adapter-merged-parity",),
        ("divergence",)]
    assert [name for name, check in CHECKS.items() if check.item == LAYER_ITEM] == [
        "deviation", "step", "drift", "merge_drift", "adapter_drift"]
    assert [name for name, check in CHECKS.items() if check.per_layer] == [
        "deviation", "step", "drift", "merge_drift", "parity_log10_pr", "adapter_drift",
        "adapter_merged_log10_pr"]
    assert [comparison_kind(name) for name in ("step", "drift", "merge_rho", "parity_loss",
                                               "adapter_loss", "adapter_merged_loss")] \
        == [None, "baseline", "merge", "parity", "adapter", "adapter-merged"]
    # every check says in words what it judges, each differently (the report's banner)
    titles = [check.title for check in CHECKS.values()]
    assert all(titles) and len(set(titles)) == len(titles)
    assert check_title("baseline_loss") == "probe loss against the baseline"
    assert check_title("not-a-check") == "not-a-check"
    assert items_of("divergence") == ("divergence",) and comparison_kind("divergence") == \
        "divergence"
    assert [name for name, check in CHECKS.items() if check.words] == [
        "drift", "merge_drift", "parity_log10_pr", "adapter_drift", "adapter_merged_log10_pr"]


def test_item_names_and_results():
    assert layer_item_name(7) == "layer-07" and layer_item_name(123) == "layer-123"
    assert item_names(4) == ("law-fit", "law-rho", "layer-01", "layer-02", "layer-03", "layer-04")
    assert item_names(3, first_layer=2) == ("law-fit", "law-rho", "layer-02", "layer-03")
    assert layer_item_name(7, num_layers=120) == "layer-007"
    assert item_names(100)[2] == "layer-001" and len(item_names(100)) == 102

    law = LawSpec(max_pearson_r=-0.5, rho=(0.9, 1.0), max_deviation=0.05, min_step_fraction=0.0)
    verdict = evaluate(kinked_fit(), law)
    assert [r.check for r in item_results(verdict, "law-fit")] == ["pearson_r"]
    assert [r.check for r in item_results(verdict, "law-rho")] == ["rho"]
    assert [(r.check, r.layer) for r in item_results(verdict, "layer-03")] == [("deviation", 3), ("step", 3)]
    assert item_results(verdict, "layer-3") == item_results(verdict, "layer-003") \
        == item_results(verdict, "layer-03")
    # The results alone (as a report keeps them) work as well as the verdict.
    assert item_results(verdict.results, "layer-03") == item_results(verdict, "layer-03")
    assert item_results(list(verdict.results), "law-rho") == item_results(verdict, "law-rho")
    assert item_results(evaluate(kinked_fit(), LawSpec()), "law-fit") == ()
    with pytest.raises(StatsError) as info:
        item_results(verdict, "layer-x")
    assert str(info.value) == ("unknown audit item 'layer-x': expected one of law-fit, law-rho, "
                               "baseline-law, baseline-loss, merge-law, merge-loss, parity, "
                               "adapter-law, adapter-loss, adapter-merged-parity, divergence or "
                               "layer-NN")


def test_results_are_frozen():
    result = evaluate(kinked_fit(), LawSpec(max_pearson_r=-0.5)).results[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.passed = False  # type: ignore[misc]
