"""The law fit: exact numbers on hand-made curves, the jackknife against a brute-force
loop, non-finite input, and errors."""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import StatsError
from audit.law import LawFit, fit_law

SCALARS = ("slope", "intercept", "pearson_r", "r_squared", "rho", "mean_step")
ARRAYS = ("pr", "log10_pr", "fitted", "deviation", "step")


def geometric(num_layers: int = 10) -> np.ndarray:
    """PR_0 = 1, PR_l = 0.9 · 0.98^(l-1): a perfect law."""
    return np.array([1.0] + [0.9 * 0.98 ** (l - 1) for l in range(1, num_layers + 1)])


def kinked() -> np.ndarray:
    """log10 PR_1..4 = 0, -0.1, -0.2, -0.1 (layer 4 rises again); PR_0 = 2."""
    return np.array([2.0, 1.0, 10 ** -0.1, 10 ** -0.2, 10 ** -0.1])


@contextlib.contextmanager
def no_warnings():
    """Turn every warning (numpy's divide and invalid ones included) into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_perfect_geometric_curve():
    fit = fit_law(geometric(10))
    step = -math.log10(0.98)
    assert fit.slope == pytest.approx(math.log10(0.98), abs=1e-14)
    assert fit.intercept == pytest.approx(math.log10(0.9) - math.log10(0.98), abs=1e-14)
    assert fit.pearson_r == pytest.approx(-1.0, abs=1e-12)
    assert -1.0 <= fit.pearson_r
    assert fit.r_squared == pytest.approx(1.0, abs=1e-12)
    assert fit.rho == pytest.approx(0.98, abs=1e-13)
    assert fit.mean_step == pytest.approx(step, abs=1e-14)
    np.testing.assert_allclose(fit.deviation[1:], 0.0, atol=1e-14)
    np.testing.assert_allclose(fit.step[2:], step, atol=1e-14)
    np.testing.assert_allclose(fit.fitted[1:], fit.log10_pr[1:], atol=1e-14)
    assert fit.log10_pr[0] == 0.0
    assert np.isnan(fit.fitted[0]) and np.isnan(fit.deviation[0])
    assert np.isnan(fit.step[0]) and np.isnan(fit.step[1])
    assert fit.num_layers == 10
    assert fit.judged_layers == range(1, 11)
    assert fit.first_layer == 1
    assert fit.shards == 0


def test_kinked_curve_by_hand():
    # x = 1..4, x̄ = 2.5, y = [0, -.1, -.2, -.1], ȳ = -0.1
    # Sxx = 5, Sxy = -0.2, Syy = 0.02 → slope -0.04, intercept 0, r = -0.2/sqrt(0.1)
    fit = fit_law(kinked())
    assert fit.slope == pytest.approx(-0.04, abs=1e-15)
    assert fit.intercept == pytest.approx(0.0, abs=1e-15)
    assert fit.pearson_r == pytest.approx(-0.2 / math.sqrt(0.1), abs=1e-14)
    assert fit.r_squared == pytest.approx(0.4, abs=1e-14)
    assert fit.rho == pytest.approx(10 ** -0.04, abs=1e-15)
    assert fit.mean_step == pytest.approx(0.1 / 3, abs=1e-15)
    np.testing.assert_allclose(fit.log10_pr, [math.log10(2), 0, -0.1, -0.2, -0.1], atol=1e-15)
    np.testing.assert_allclose(fit.fitted, [np.nan, -0.04, -0.08, -0.12, -0.16], atol=1e-15)
    np.testing.assert_allclose(fit.deviation, [np.nan, 0.04, -0.02, -0.08, 0.06], atol=1e-15)
    np.testing.assert_allclose(fit.step, [np.nan, np.nan, 0.1, 0.1, -0.1], atol=1e-15)


def test_first_layer_moves_the_fit_and_the_steps():
    # Layers 2..4: y = [-.1, -.2, -.1] → slope 0, r 0, mean step 0.
    fit = fit_law(kinked(), first_layer=2)
    assert fit.judged_layers == range(2, 5)
    assert fit.slope == pytest.approx(0.0, abs=1e-15)
    assert fit.pearson_r == pytest.approx(0.0, abs=1e-14)
    assert fit.rho == pytest.approx(1.0, abs=1e-15)
    assert fit.mean_step == pytest.approx(0.0, abs=1e-15)
    assert np.isnan(fit.fitted[:2]).all()
    np.testing.assert_allclose(fit.step, [np.nan, np.nan, np.nan, 0.1, -0.1], atol=1e-15)

    with_embedding = fit_law(kinked(), first_layer=0)
    assert with_embedding.judged_layers == range(0, 5)
    assert with_embedding.step[1] == pytest.approx(math.log10(2))
    assert np.isnan(with_embedding.step[0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=3, max_size=40))
def test_line_matches_polyfit_and_corrcoef(values):
    pr = np.array(values)
    x = np.arange(1, len(pr))
    y = np.log10(pr[1:])
    fit = fit_law(pr)
    slope, intercept = np.polyfit(x, y, 1)
    assert fit.slope == pytest.approx(slope, abs=1e-9)
    assert fit.intercept == pytest.approx(intercept, abs=1e-9)
    if np.ptp(y) > 1e-6:
        assert fit.pearson_r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)
    np.testing.assert_allclose(fit.deviation[1:], y - (intercept + slope * x), atol=1e-9)


def brute_force_se(rows: np.ndarray, first_layer: int) -> dict[str, np.ndarray]:
    fits = [fit_law(row, first_layer=first_layer) for row in rows]
    g = len(fits)
    out = {}
    for name in SCALARS + ARRAYS:
        values = np.array([getattr(f, name) for f in fits], dtype=np.float64)
        mean = values.mean(axis=0)
        total = np.zeros_like(mean)
        for value in values:  # the textbook sum, one shard at a time
            total = total + (value - mean) ** 2
        out[name] = np.sqrt((g - 1) / g * total)
    return out


@pytest.mark.parametrize("seed, shards, first_layer", [(0, 10, 1), (1, 2, 1), (2, 5, 0), (3, 7, 3)])
def test_jackknife_matches_brute_force(seed, shards, first_layer):
    rng = np.random.default_rng(seed)
    base = 0.9 * 0.97 ** np.arange(13)
    rows = base * np.exp(rng.normal(0.0, 0.01, size=(shards, 13)))
    fit = fit_law(base, first_layer=first_layer, leave_one_out=rows)
    expected = brute_force_se(rows, first_layer)
    assert fit.shards == shards
    for name in SCALARS:
        assert getattr(fit, name + "_se") == pytest.approx(float(expected[name]), rel=1e-10, abs=1e-15)
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(fit, name + "_se"), expected[name], rtol=1e-10, atol=1e-15)
    # Defined wherever the quantity is; NaN where it is not.
    assert np.isfinite(fit.pr_se).all() and np.isfinite(fit.log10_pr_se).all()
    assert np.isnan(fit.fitted_se[:first_layer]).all()
    assert np.isnan(fit.step_se[:first_layer + 1]).all()
    assert np.isfinite(fit.step_se[first_layer + 1:]).all()
    assert fit.slope_se > 0 and fit.deviation_se[first_layer] > 0


def test_standard_errors_are_nan_without_two_shards():
    for loo in (None, geometric(6)[None, :]):
        fit = fit_law(geometric(6), leave_one_out=loo)
        assert fit.shards == (0 if loo is None else 1)
        for name in SCALARS:
            assert math.isnan(getattr(fit, name + "_se"))
        for name in ARRAYS:
            se = getattr(fit, name + "_se")
            assert se.shape == (7,) and np.isnan(se).all()


def test_identical_leave_one_out_curves_give_zero_se():
    rows = np.tile(kinked(), (4, 1))
    fit = fit_law(kinked(), leave_one_out=rows)
    assert fit.slope_se == 0.0 and fit.pearson_r_se == 0.0
    np.testing.assert_array_equal(fit.deviation_se[1:], 0.0)


def test_nan_in_one_leave_one_out_curve_makes_its_se_nan():
    rows = np.tile(kinked(), (3, 1))
    rows[1, 3] = np.nan
    with no_warnings():
        fit = fit_law(kinked(), leave_one_out=rows)
    assert math.isnan(fit.slope_se) and math.isnan(fit.pearson_r_se)
    assert fit.mean_step_se == pytest.approx(0.0, abs=1e-15)  # layers 1 and 4 are intact in every curve
    assert np.isnan(fit.step_se[3]) and np.isnan(fit.step_se[4])
    assert fit.step_se[2] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("bad", [np.nan, 0.0, -0.5, np.inf])
def test_non_finite_pr_makes_the_fit_nan_without_raising(bad):
    pr = geometric(6)
    pr[3] = bad
    with no_warnings():
        fit = fit_law(pr)
    assert np.isnan(fit.log10_pr[3])  # never -inf
    for name in ("slope", "intercept", "pearson_r", "r_squared", "rho"):
        assert math.isnan(getattr(fit, name)), name
    assert np.isnan(fit.fitted).all() and np.isnan(fit.deviation).all()
    assert np.isnan(fit.step[3]) and np.isnan(fit.step[4])
    assert fit.step[2] == pytest.approx(-math.log10(0.98))
    assert fit.mean_step == pytest.approx(-math.log10(0.98))  # layers 1 and 6 are fine
    assert fit.undefined_layers() == (3,)


def test_non_finite_last_layer_makes_the_mean_step_nan():
    pr = geometric(4)
    pr[4] = 0.0
    fit = fit_law(pr)
    assert math.isnan(fit.mean_step)


def test_flat_curve_has_undefined_r_and_no_warning():
    with no_warnings():
        fit = fit_law(np.full(8, 0.8))
    assert math.isnan(fit.pearson_r) and math.isnan(fit.r_squared)
    assert fit.slope == 0.0 and fit.rho == 1.0 and fit.mean_step == 0.0
    np.testing.assert_array_equal(fit.deviation[1:], 0.0)
    assert fit.undefined_layers() == ()


def test_result_is_frozen_and_independent_of_the_input():
    pr = geometric(5)
    fit = fit_law(pr)
    pr[2] = 123.0
    assert fit.pr[2] == pytest.approx(0.9 * 0.98)
    for name in ARRAYS:
        with pytest.raises(ValueError):
            getattr(fit, name)[1] = 0.0
        with pytest.raises(ValueError):
            getattr(fit, name + "_se")[1] = 0.0
    with pytest.raises(AttributeError):
        fit.slope = 0.0  # type: ignore[misc]
    assert isinstance(fit, LawFit)
    assert all(type(getattr(fit, name)) is float for name in SCALARS)


def test_errors():
    with pytest.raises(StatsError, match=r"^fit_law expects one PR value per layer \(shape \[L\+1\]\), "
                                         r"got shape \(2, 3\)$"):
        fit_law(np.ones((2, 3)))
    with pytest.raises(StatsError) as info:
        fit_law([0.9, 0.8])
    assert str(info.value) == ("the law needs at least 2 layers to fit a line; got layers 1..1 "
                               "(2 PR values, first_layer=1)")
    with pytest.raises(StatsError, match="at least 2 layers"):
        fit_law(geometric(4), first_layer=4)
    with pytest.raises(StatsError, match=r"^first_layer must be an integer >= 0, got -1$"):
        fit_law(geometric(4), first_layer=-1)
    with pytest.raises(StatsError) as info:
        fit_law(geometric(4), leave_one_out=np.ones((3, 4)))
    assert str(info.value) == ("leave_one_out must have shape [shards, 5] (one PR curve per "
                               "shard left out), got shape (3, 4)")
    fit_law([0.9, 0.8, 0.7])  # two judged layers are enough
