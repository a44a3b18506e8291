"""Tests for audit.synthetic.features: a planted law is recovered, a planted broken
layer is flagged and is the only one, and PR ignores what it must ignore.

Tolerances are derived, never tuned.  ``SyntheticFeatures.log10_pr_se`` gives the
sampling standard error σ_l of each layer's log10 PR (analytic, independent across
layers; ``test_planted_law_is_recovered`` checks it against the engine's
jackknife), and :func:`model_error` bounds b_l, how far E[log10 PR_l] may sit from
log10 ``expected_pr``.  Every bound is ``Z`` standard errors of the quantity
(a slope, a deviation, a step: linear in the log10 PRs, so their standard errors
follow from σ) plus its share of b.  With Z = 5 a healthy draw exceeds one bound
with probability 5.7e-7 (two-sided normal); an example makes at most a few dozen
comparisons.

Invariances that tests/test_stats.py already checks as properties are not
repeated here: ``test_streaming_equals_direct`` (every measure equals the direct
computation whatever the batch boundaries, batch order, shard of each batch and a
two-way merge) and ``test_ill_conditioned_equals_exact``.  What is added: affine
maps of a layer's features, relabelling the vocabulary (a property here; an
example in test_stats), and the jackknife (leave-one-out values and standard
errors) under rebatching and merges of up to four accumulators.

Hypothesis settings come from the profile (tests/conftest.py: ci, dev, thorough).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from audit.errors import StatsError
from audit.law import fit_law
from audit.spec import LawSpec
from audit.stats.layer_stats import LayerStats
from audit.stats.measures import MEASURES
from audit.stats.methods import METHODS
from audit.synthetic.features import (
    BREAKS,
    BrokenLayer,
    PlantedLaw,
    SyntheticFeatures,
    planted_features,
)

Z = 5.0
"""Standard errors in every derived tolerance (5.7e-7 two-sided per comparison)."""

# Seconds per example, not examples: how many is the profile's business.
property_settings = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)
LN10 = math.log(10.0)
REGRESSIONS = ("token_id", "shuffled_token_id", "one_hot")
"""The measures that are least squares on the features (separation is not: with
fewer classes than dimensions its pseudo-inverse is not covariant under
non-orthogonal maps)."""


# ------------------------------------------------------------------ tolerances
def model_error(synth: SyntheticFeatures) -> np.ndarray:
    """b_l [L+1]: a bound on |E[log10 PR_l] − log10 expected_pr_l|, in decades.  The
    log of a noisy value is biased by about −ln10 · σ²/2, and q (n−d−1)/(n−1) is
    within about 2 (1−q)/n (relative) of E[PR].  Measured over 3000 draws each at
    n = 200 (d = 1 and 20) and n = 1000 (d = 5), q from 0.2 to 0.95: every mean
    log10 PR within b of log10 expected_pr (the largest, 0.0043 against b = 0.0058)."""
    se = synth.log10_pr_se
    return LN10 * se**2 / 2 + 2 * (1 - synth.population_pr) / synth.n / LN10


def line_algebra(layers: int) -> tuple[np.ndarray, float, np.ndarray]:
    """For judged layers 1..L: centred indices xc [L], Sxx, and the residual-maker
    I − H [L, L] of the line (deviation = (I − H) log10 PR)."""
    x = np.arange(1, layers + 1, dtype=np.float64)
    xc = x - x.mean()
    sxx = float(xc @ xc)
    hat = 1.0 / layers + np.outer(xc, xc) / sxx
    return xc, sxx, np.eye(layers) - hat


def slope_tolerance(synth: SyntheticFeatures) -> float:
    """Z standard errors of the fitted slope plus its bias bound: the slope is
    Σ xc_l y_l / Sxx, so its SE is sqrt(Σ xc² σ²)/Sxx."""
    xc, sxx, _ = line_algebra(synth.layers)
    se, b = synth.log10_pr_se[1:], model_error(synth)[1:]
    return Z * math.sqrt(float(np.sum(xc**2 * se**2))) / sxx + float(np.abs(xc) @ b) / sxx


def deviation_bounds(synth: SyntheticFeatures) -> np.ndarray:
    """Per judged layer [L]: how far the measured deviation may sit from the
    expected curve's, Z SE of ((I − H) y)_l plus |I − H| b."""
    _, _, resid = line_algebra(synth.layers)
    se, b = synth.log10_pr_se[1:], model_error(synth)[1:]
    return Z * np.sqrt((resid**2) @ se**2) + np.abs(resid) @ b


def step_bounds(synth: SyntheticFeatures) -> tuple[np.ndarray, float]:
    """How far each measured step (layers 2..L, [L−1]) and the mean step may sit from
    the expected curve's."""
    se, b = synth.log10_pr_se[1:], model_error(synth)[1:]
    steps = Z * np.sqrt(se[:-1] ** 2 + se[1:] ** 2) + b[:-1] + b[1:]
    L = synth.layers
    mean = (Z * math.sqrt(se[0] ** 2 + se[-1] ** 2) + b[0] + b[-1]) / (L - 1)
    return steps, mean


def pearson_bound(synth: SyntheticFeatures) -> float | None:
    """An upper bound of the measured Pearson r when every layer's log10 PR lies
    within w_l = Z σ_l + b_l of its expectation: Sxy rises by at most Σ|xc| w and
    sqrt(Syy) by at most |w|.  None when the bound is not negative (a curve this
    flat promises no r)."""
    xc, sxx, _ = line_algebra(synth.layers)
    y = np.log10(synth.expected_pr[1:])
    w = Z * synth.log10_pr_se[1:] + model_error(synth)[1:]
    yc = y - y.mean()
    high = float(xc @ yc) + float(np.abs(xc) @ w)
    if high >= 0:
        return None
    return high / (math.sqrt(sxx) * (math.sqrt(float(yc @ yc)) + float(np.linalg.norm(w))))


def violations(report) -> list[str]:
    return [check.message for check in report.checks if check.violation]


# ----------------------------------------------------------------- the planted law
@property_settings
@given(seed=seeds, layers=st.integers(3, 12), d=st.integers(1, 16),
       n=st.integers(2_000, 20_000), pr_first=st.floats(0.3, 0.95),
       rho=st.floats(0.85, 0.99), pr_embedding=st.none() | st.floats(0.3, 0.99),
       jitter=st.just(0.0) | st.floats(0.0, 0.02), jitter_seed=st.integers(0, 100))
def test_planted_law_is_recovered(seed, layers, d, n, pr_first, rho, pr_embedding, jitter,
                                  jitter_seed):
    """ρ and PR_1 come back within Z standard errors of what was planted, the
    engine's jackknife agrees with the analytic σ, and the audit's verdict passes
    with LawSpec thresholds derived from the planted curve and σ.  With jitter the
    planted ρ is the fit of the expected curve (the line through the jittered
    points), equal to ``rho`` without it."""
    law = PlantedLaw(layers=layers, pr_first=pr_first, rho=rho, pr_embedding=pr_embedding,
                     jitter=jitter, jitter_seed=jitter_seed)
    synth = planted_features(law, n=n, d=d, seed=seed)
    planted = fit_law(synth.expected_pr)

    # Thresholds around the planted values (from the expected curve and σ only).
    t = slope_tolerance(synth)
    steps, mean_step = step_bounds(synth)
    low_step = float(np.min(planted.step[2:] - steps))
    m_low, m_high = abs(planted.mean_step) - mean_step, abs(planted.mean_step) + mean_step
    fraction = None  # a mean step that may be 0 promises no step threshold
    if m_low > 0:
        fraction = low_step / m_high if low_step >= 0 else low_step / m_low
    thresholds = LawSpec(
        max_pearson_r=pearson_bound(synth),
        rho=(planted.rho * 10.0**-t, planted.rho * 10.0**t),
        max_deviation=float(np.max(np.abs(planted.deviation[1:]) + deviation_bounds(synth))),
        min_step_fraction=fraction)
    note(f"{thresholds}")
    report = synth.judge(thresholds, shards=20)  # the audit's own code path

    rho_tol = planted.rho * (10.0**t - 1.0)
    note(f"rho {report.law.rho:.5f} planted {planted.rho:.5f}: |diff| "
         f"{abs(report.law.rho - planted.rho):.2e} <= tolerance {rho_tol:.2e}; "
         f"jackknife se {report.law.rho_se:.2e}")
    assert abs(report.law.rho - planted.rho) <= rho_tol

    pr1_tol = Z * synth.log10_pr_se[1] + model_error(synth)[1]
    assert abs(math.log10(report.law.pr_first) - math.log10(synth.expected_pr[1])) <= pr1_tol

    # The engine's jackknife of log10 PR (20 shards, pooled over the judged layers:
    # at least 57 degrees of freedom) agrees with the analytic σ within a factor 2.
    jack = np.array([row.log10_pr_se for row in report.layers[1:]])
    ratio = math.sqrt(np.mean(jack**2) / np.mean(synth.log10_pr_se[1:] ** 2))
    note(f"jackknife / analytic se of log10 PR: {ratio:.3f}")
    assert 0.5 <= ratio <= 2.0

    assert report.verdict == "pass", violations(report)


@property_settings
@given(seed=seeds, layers=st.integers(4, 7), d=st.integers(1, 8),
       n=st.integers(25_000, 35_000), pr_first=st.floats(0.55, 0.7),
       step=st.floats(0.07, 0.12), kind=st.sampled_from(BREAKS), data=st.data())
def test_broken_layer_is_the_only_one_flagged(seed, layers, d, n, pr_first, step, kind, data):
    """A layer k in 2..L−1 planted broken is flagged by the per-layer checks, and no
    other layer is.

    Domain: L in 4..7, k in 2..L−1, d in 1..8, n in 25,000..35,000, PR_1 in
    0.55..0.7, a planted step −log10 ρ = s in 0.07..0.12 decades (so PR_L ≥ 0.1),
    a ``loses_information`` rise in s..0.12 decades (PR_k ≤ 0.93).  Why:
    σ(log10 PR) ≤ sqrt(2/n)/ln10 = 0.0039 at n = 25,000, so a step's standard
    error is at most 0.0055 and Z = 5 of them (0.028), plus the mean step's own
    uncertainty (≤ 0.005 on the threshold), fit inside the gap of at least
    0.5 s = 0.035 between a healthy step (s, or more after k) and the step
    threshold (``min_step_fraction`` 0.5: half the mean step, which a break at
    2..L−1 does not move), and inside the gap between the threshold and the broken
    step (0, −rise, or log10 PR_{k−1} ≤ −0.15 for a scrambled layer).  The test
    asserts these margins from σ before it measures (worst corner of the domain:
    0.005 decades to spare).

    The deviation check names k only when the planted break stands out of the
    line's leverage: the fitted line moves each other layer j by h_jk ≤ 0.4 of the
    break, so ``max_deviation`` is set midway between the largest expected |dev|
    elsewhere and the break's, and used only when both sit Z σ clear of it (with
    ``max_deviation_sigma`` 3); otherwise it is off.  A flat step
    (``learns_nothing``) is one mean step out of line: it is the step check that
    names it, as on real models (README, "What the law can and cannot see").
    Law-level checks are off: a broken layer may fail them too."""
    k = data.draw(st.integers(2, layers - 1), "k")
    rise = data.draw(st.floats(step, 0.12), "rise")
    law = PlantedLaw(layers=layers, pr_first=pr_first, rho=10.0**-step,
                     broken=BrokenLayer(kind, k, rise=rise))
    synth = planted_features(law, n=n, d=d, seed=seed)
    planted = fit_law(synth.expected_pr)

    steps, mean_step = step_bounds(synth)
    threshold_high = 0.5 * (abs(planted.mean_step) + mean_step)
    threshold_low = 0.5 * (abs(planted.mean_step) - mean_step)
    for layer in range(2, layers + 1):
        if layer == k:
            assert planted.step[layer] + steps[layer - 2] < threshold_low, "domain too noisy"
        else:
            assert planted.step[layer] - steps[layer - 2] > threshold_high, "domain too noisy"

    dev = np.abs(planted.deviation[1:])
    bound = deviation_bounds(synth)
    others = np.delete(dev + bound, k - 1)
    separable = dev[k - 1] - bound[k - 1] > others.max()
    max_deviation = (dev[k - 1] - bound[k - 1] + others.max()) / 2 if separable else None
    thresholds = LawSpec(max_deviation=max_deviation,
                         max_deviation_sigma=3.0 if separable else None,
                         min_step_fraction=0.5)
    note(f"{thresholds}; expected |deviation| {np.round(dev, 4)} ± {np.round(bound, 4)}")
    report = synth.judge(thresholds, shards=10)

    failed = {(check.layer, check.check) for check in report.checks if not check.passed}
    assert {layer for layer, _ in failed} == {k}, violations(report)
    assert (k, "step") in failed
    assert ((k, "deviation") in failed) == separable


def test_deviation_check_names_a_break_only_beyond_the_lines_leverage():
    """Both branches of the test above, at the domain's noisiest corner (n =
    25,000, d = 8, PR_1 = 0.55, s = 0.07): a scrambled layer stands far out of the
    line, so the deviation check names it too; a flat step at layer 2 of 4 moves
    its neighbour layer 1 by 0.4 of its own deviation, and the deviation check
    cannot tell them apart at this noise."""
    for kind, layers, separable in (("scrambled", 6, True), ("learns_nothing", 4, False)):
        law = PlantedLaw(layers=layers, pr_first=0.55, rho=10.0**-0.07, broken=BrokenLayer(kind, 2))
        synth = planted_features(law, n=25_000, d=8, seed=0)
        dev, bound = np.abs(fit_law(synth.expected_pr).deviation[1:]), deviation_bounds(synth)
        assert bool(dev[1] - bound[1] > np.delete(dev + bound, 1).max()) is separable
    report = synth.judge(LawSpec(min_step_fraction=0.5), shards=10)
    assert [(c.layer, c.check) for c in report.checks if not c.passed] == [(2, "step")]


# ------------------------------------------------------------------ invariances
@property_settings
@given(seed=seeds, d=st.integers(1, 12), n=st.integers(60, 2_000), vocab=st.integers(3, 40),
       log_kappa=st.floats(0.0, 2.0), offset=st.sampled_from([0.0, 1.0, 1e3]),
       shards=st.integers(1, 4), method=st.sampled_from(METHODS))
def test_pr_is_invariant_to_affine_maps_of_the_features(seed, d, n, vocab, log_kappa, offset,
                                                        shards, method):
    """x → x A + b with A = U diag(1 … 10^−log_kappa) Vᵀ (κ(A) ≤ 100) and b of size
    ``offset``, a different map per layer: the regression measures and their
    leave-one-out values do not move beyond the engine's precision (κ of the
    features ≤ 4 × 100, so κ² × eps ≤ 4e-11; tolerance 1e-8, test_stats's for
    κ ≤ 1e3)."""
    law = PlantedLaw(layers=2, pr_first=0.7, rho=0.8)
    synth = planted_features(law, n=n, d=d, seed=seed, vocab=vocab)
    rng = np.random.default_rng(seed + 1)
    mapped = synth.features.copy()
    for layer in range(mapped.shape[0]):
        u, _ = np.linalg.qr(rng.standard_normal((d, d)))
        v, _ = np.linalg.qr(rng.standard_normal((d, d)))
        A = (u * np.logspace(0, -log_kappa, d)) @ v.T
        mapped[layer] = mapped[layer] @ A + offset * rng.standard_normal(d)
    moved = dataclasses.replace(synth, features=mapped)
    before = synth.stats(shards, measures=REGRESSIONS, method=method)
    after = moved.stats(shards, measures=REGRESSIONS, method=method)
    for measure in REGRESSIONS:
        np.testing.assert_allclose(after.residuals(measure), before.residuals(measure),
                                   rtol=1e-8, err_msg=measure)
        np.testing.assert_allclose(after.leave_one_out(measure), before.leave_one_out(measure),
                                   rtol=1e-8, err_msg=measure)


@property_settings
@given(seed=seeds, d=st.integers(1, 8), n=st.integers(50, 2_000), vocab=st.integers(3, 40),
       shards=st.integers(1, 4), method=st.sampled_from(METHODS))
def test_one_hot_is_invariant_to_relabelling_the_vocabulary(seed, d, n, vocab, shards, method):
    """A permutation of the target ids leaves ``one_hot`` and ``separation`` (and
    their jackknife) unchanged to 1e-10: it only reorders the one-hot outputs and
    the classes."""
    synth = planted_features(PlantedLaw(layers=2, pr_first=0.8, rho=0.8), n=n, d=d,
                             seed=seed, vocab=vocab)
    perm = np.random.default_rng(seed + 1).permutation(vocab)
    relabelled = dataclasses.replace(synth, targets=perm[synth.targets])
    measures = ("one_hot", "separation")
    before = synth.stats(shards, measures=measures, method=method)
    after = relabelled.stats(shards, measures=measures, method=method)
    for measure in measures:
        np.testing.assert_allclose(after.residuals(measure), before.residuals(measure),
                                   rtol=1e-10, err_msg=measure)
        np.testing.assert_allclose(after.leave_one_out(measure), before.leave_one_out(measure),
                                   rtol=1e-10, err_msg=measure)


@property_settings
@given(seed=seeds, d=st.integers(1, 6), n=st.integers(40, 1_000), vocab=st.integers(3, 20),
       shards=st.integers(1, 5), parts=st.integers(1, 4), method=st.sampled_from(METHODS),
       data=st.data())
def test_jackknife_does_not_depend_on_batches_order_or_merges(seed, d, n, vocab, shards, parts,
                                                              method, data):
    """Every example keeps its shard (contiguous blocks); the batches are cut
    anywhere within shards, fed in any order to ``parts`` accumulators, which are
    merged in any order.  Every measure's value, leave-one-shard-out values and
    standard errors equal those of one batch per shard (``stats(batch_size=n)``),
    as does ``stats()`` with any batch size."""
    synth = planted_features(PlantedLaw(layers=2, pr_first=0.8, rho=0.8), n=n, d=d,
                             seed=seed, vocab=vocab)
    reference = synth.stats(shards, measures=MEASURES, batch_size=n, method=method)
    shard_of = synth.shard_of(shards)
    cuts = data.draw(st.lists(st.integers(1, n - 1), max_size=8, unique=True), "cuts")
    bounds = sorted({0, n, *cuts, *np.flatnonzero(np.diff(shard_of)) + 1})
    batches = list(zip(bounds[:-1], bounds[1:]))
    order = data.draw(st.permutations(range(len(batches))), "order")
    owner = data.draw(st.lists(st.integers(0, parts - 1), min_size=len(batches),
                               max_size=len(batches)), "owner")
    accumulators = [LayerStats(MEASURES, shards=shards, method=method) for _ in range(parts)]
    for i in order:
        lo, hi = batches[i]
        accumulators[owner[i]].update(synth.features[:, lo:hi], synth.targets[lo:hi],
                                      shard=int(shard_of[lo]))
    merge_order = data.draw(st.permutations(range(parts)), "merge order")
    merged = functools.reduce(lambda a, b: a + b, [accumulators[i] for i in merge_order])
    batch_size = data.draw(st.integers(1, n), "batch size")
    for stats in (merged, synth.stats(shards, measures=MEASURES, batch_size=batch_size,
                                      method=method)):
        assert stats.count == n and stats.filled_shards == reference.filled_shards
        for measure in MEASURES:
            np.testing.assert_allclose(stats.residuals(measure), reference.residuals(measure),
                                       rtol=1e-8, err_msg=measure)
            np.testing.assert_allclose(stats.leave_one_out(measure),
                                       reference.leave_one_out(measure), rtol=1e-8,
                                       err_msg=measure)


# ------------------------------------------------------------------ the generator
def test_population_curve_and_broken_layers():
    """q_l as documented, the in-sample expectation, ρ of the expected curve and σ."""
    law = PlantedLaw(layers=5, pr_first=0.8, rho=0.9)
    q = 0.8 * 0.9 ** np.arange(5)
    np.testing.assert_allclose(law.population_pr(), [0.8, *q], rtol=1e-15)
    np.testing.assert_allclose(dataclasses.replace(law, pr_embedding=0.95).population_pr(),
                               [0.95, *q], rtol=1e-15)
    for broken, value in ((BrokenLayer("learns_nothing", 3), q[1]),
                          (BrokenLayer("loses_information", 3, rise=0.1), q[1] * 10**0.1),
                          (BrokenLayer("scrambled", 3), 1.0)):
        got = dataclasses.replace(law, broken=broken).population_pr()
        np.testing.assert_allclose(np.delete(got, 3), np.delete([0.8, *q], 3), rtol=1e-15)
        assert got[3] == pytest.approx(value, rel=1e-15)
    jittered = dataclasses.replace(law, jitter=0.01, jitter_seed=4).population_pr()
    shift = np.log10(jittered[1:] / q)  # the seeded departures, 0.01 decades each
    np.testing.assert_allclose(shift, 0.01 * np.random.default_rng(4).standard_normal(5),
                               rtol=1e-9)
    assert jittered[0] == jittered[1]

    synth = planted_features(law, n=1_000, d=9, seed=0)
    np.testing.assert_allclose(synth.expected_pr, synth.population_pr * 990 / 999, rtol=1e-15)
    fit = fit_law(synth.expected_pr)
    assert fit.rho == pytest.approx(0.9, rel=1e-12) and fit.pearson_r == pytest.approx(-1.0)
    assert synth.log10_pr_se[1] == pytest.approx(
        math.sqrt(2 * (1 - 0.64) / 1000 + 18 / 1000**2) / LN10, rel=1e-12)
    with pytest.raises(ValueError):
        synth.expected_pr[0] = 1.0  # read-only


def test_arrays_are_seeded_shaped_and_scrambled_as_documented():
    law = PlantedLaw(layers=3, pr_first=0.6, rho=0.8)
    a = planted_features(law, n=500, d=4, seed=3)
    b = planted_features(law, n=500, d=4, seed=3)
    c = planted_features(law, n=500, d=4, seed=4, vocab=100, dtype="float32")
    assert a.features.shape == (4, 500, 4) and a.features.dtype == np.float64
    assert a.targets.shape == (500,) and a.targets.dtype == np.int64
    assert c.features.dtype == np.float32 and 0 <= c.targets.min() and c.targets.max() < 100
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.targets, c.targets)
    assert a.layers == 3 and a.stats(shards=3).count == 500
    assert np.bincount(a.shard_of(3)).tolist() == [167, 167, 166]
    # A scrambled layer is the healthy draw with its rows permuted; the rest is equal.
    s = planted_features(dataclasses.replace(law, broken=BrokenLayer("scrambled", 2)),
                         n=500, d=4, seed=3)
    np.testing.assert_array_equal(np.delete(s.features, 2, axis=0),
                                  np.delete(a.features, 2, axis=0))
    rows = lambda x: x[np.lexsort(x.T)]  # noqa: E731
    np.testing.assert_array_equal(rows(s.features[2]), rows(a.features[2]))
    assert not np.array_equal(s.features[2], a.features[2])
    assert s.expected_pr[2] == pytest.approx(495 / 499)


def test_judge_is_the_audit_code_path():
    """``judge`` gives the report ``pipeline.judge`` writes: its fit is ``fit_law`` of
    the engine's values, and a check that fails says so."""
    synth = planted_features(PlantedLaw(layers=4, pr_first=0.7, rho=0.9), n=3_000, d=3, seed=1)
    stats = synth.stats(shards=5)
    fit = fit_law(stats.residuals("token_id"), leave_one_out=stats.leave_one_out("token_id"))
    report = synth.judge(LawSpec(rho=(0.5, 0.6)), shards=5)
    assert report.law.rho == fit.rho and report.law.rho_se == fit.rho_se
    assert report.verdict == "fail" and report.shards == 5 and report.loss is None
    assert [c.check for c in report.checks] == ["rho"] and report.model["width"] == 3


@pytest.mark.parametrize("make, message", [
    (lambda: PlantedLaw(layers=1, pr_first=0.5, rho=0.9).population_pr(),
     "layers must be an integer >= 2 (the law needs two judged layers), got 1"),
    (lambda: PlantedLaw(layers=3, pr_first=1.0, rho=0.9).population_pr(),
     "pr_first must be a number in (0, 1), got 1.0"),
    (lambda: PlantedLaw(layers=3, pr_first=0.5, rho=0.9, pr_embedding=0.0).population_pr(),
     "pr_embedding must be a number in (0, 1), got 0.0"),
    (lambda: PlantedLaw(layers=3, pr_first=0.5, rho=-1.0).population_pr(),
     "rho must be a positive number, got -1.0"),
    (lambda: PlantedLaw(layers=3, pr_first=0.5, rho=0.9, jitter=-0.1).population_pr(),
     "jitter must be a number >= 0 (decades), got -0.1"),
    (lambda: PlantedLaw(layers=3, pr_first=0.9, rho=1.1).population_pr(),
     "planted PR of layer 3 is 1.089, outside (0, 1): lower pr_first or jitter, raise rho "
     "towards 1 or use fewer layers"),
    (lambda: PlantedLaw(layers=3, pr_first=0.9, rho=0.9,
                        broken=BrokenLayer("loses_information", 2, rise=0.1)).population_pr(),
     "planted PR of layer 2 is 1.133, outside (0, 1): lower pr_first or jitter, raise rho "
     "towards 1 or use fewer layers, or a smaller broken.rise"),
    (lambda: PlantedLaw(layers=3, pr_first=0.5, rho=0.9,
                        broken=BrokenLayer("zeroed", 2)).population_pr(),
     "unknown kind of broken layer 'zeroed'; valid kinds: learns_nothing, loses_information, "
     "scrambled"),
    (lambda: PlantedLaw(layers=3, pr_first=0.5, rho=0.9,
                        broken=BrokenLayer("scrambled", 0)).population_pr(),
     "broken.layer must be an integer in 1..3 (the blocks' outputs), got 0"),
    (lambda: planted_features(PlantedLaw(layers=2, pr_first=0.5, rho=0.9), n=5, d=4),
     "n must exceed d + 1 = 5 (in-sample least squares with an intercept and 4 features "
     "needs more examples), got n = 5"),
    (lambda: planted_features(PlantedLaw(layers=2, pr_first=0.5, rho=0.9), n=50, d=0),
     "d must be >= 1, got 0"),
    (lambda: planted_features(PlantedLaw(layers=2, pr_first=0.5, rho=0.9), n=50, d=2,
                              dtype="float16"),
     "dtype must be float32 or float64, got float16"),
    (lambda: planted_features(PlantedLaw(layers=2, pr_first=0.5, rho=0.9), n=3, d=1, vocab=2,
                              seed=1),
     "the 3 targets drawn all equal 1: PR is undefined; raise vocab (now 2) or n"),
    (lambda: planted_features(PlantedLaw(layers=2, pr_first=0.5, rho=0.9), n=50, d=2)
     .stats(batch_size=0),
     "batch_size must be a positive integer, got 0"),
])
def test_errors(make, message):
    with pytest.raises(StatsError) as err:
        make()
    assert str(err.value) == message


def test_import_is_light():
    import subprocess
    import sys
    code = ("import sys, audit.synthetic.features; print(sorted(m for m in "
            "('torch', 'transformers', 'scipy', 'pytest', 'audit.pipeline') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
