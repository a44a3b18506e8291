"""Tests for the results path of the statistics engine (audit.stats.linalg's
workspace and in-place Cholesky, LayerStats.results): the fast paths give the
numbers of the plain ones, bit for bit, and the leave-one-shard-out values those of
statistics fed without that shard."""

from __future__ import annotations

import numpy as np
import pytest

from audit.errors import StatsError
from audit.stats import linalg
from audit.stats.layer_stats import LayerStats
from audit.stats.measures import MEASURES

SETUPS = (("gram", "memory"), ("gram", "spill"), ("qr", "memory"))


def _data(rng, layers=2, n=600, d=12, k=9, deficient=False):
    vocab = np.sort(rng.choice(50_000, size=k, replace=False))
    y = vocab[rng.integers(0, k, n)]
    y[:k] = vocab
    x = rng.standard_normal((layers, n, d)) + 3.0
    x[..., 0] += y / 50_000.0
    if deficient:  # a constant column and a dependent one
        x[..., -1] = 2.0
        x[..., -2] = x[..., 0] - x[..., 1]
    return x, y


def _fed(x, y, method, storage, tmp_path, shards=5, skip=None, filled=None):
    stats = LayerStats(MEASURES, shards=shards, method=method, storage=storage,
                       spill_dir=tmp_path if storage == "spill" else None)
    part = np.arange(y.size) % (filled or shards)
    for s in range(filled or shards):
        if s != skip:
            stats.update(x[:, part == s], y[part == s], shard=s)
    return stats


@pytest.mark.parametrize("method,storage", SETUPS)
@pytest.mark.parametrize("deficient", [False, True])
def test_results_equal_the_four_calls(tmp_path, method, storage, deficient):
    x, y = _data(np.random.default_rng(3), deficient=deficient)
    for measure in MEASURES:
        with _fed(x, y, method, storage, tmp_path) as a, \
                _fed(x, y, method, storage, tmp_path) as b:
            got = a.results(measure)
            again = a.results(measure)  # reused arrays leave nothing behind
            np.testing.assert_array_equal(got.values, b.residuals(measure))
            np.testing.assert_array_equal(got.leave_one_out, b.leave_one_out(measure))
            np.testing.assert_array_equal(got.ranks, b.rank())
            np.testing.assert_array_equal(got.conditions, b.condition())
            np.testing.assert_array_equal(again.leave_one_out, got.leave_one_out)
            assert got.leave_one_out.shape == (5, 2)
            assert (got.ranks == (10 if deficient else 12)).all()
            assert np.isinf(got.conditions).all() == deficient


@pytest.mark.parametrize("method,storage", SETUPS)
def test_results_with_one_filled_shard_and_errors(tmp_path, method, storage):
    x, y = _data(np.random.default_rng(4))
    with _fed(x, y, method, storage, tmp_path, filled=1) as stats:
        got = stats.results("token_id")
        assert got.leave_one_out.shape == (0, 2)
        np.testing.assert_array_equal(got.values, stats.residuals("token_id"))
    with pytest.raises(StatsError, match="only one distinct target value"):
        single = LayerStats("token_id", shards=2, method=method)
        single.update(x[:, :10], np.full(10, 7), shard=0)
        single.results("token_id")
    with pytest.raises(StatsError, match="no examples: call update"):
        LayerStats("token_id", method=method).results("token_id")


@pytest.mark.parametrize("method,storage", SETUPS)
def test_leave_one_out_equals_statistics_fed_without_the_shard(tmp_path, method, storage):
    """The jackknife's values (the total minus a shard's sums) are those of a
    fresh accumulator that never saw the shard, to rounding (1e-11 relative at
    this condition number): the paired drift SEs rest on them."""
    x, y = _data(np.random.default_rng(5))
    with _fed(x, y, method, storage, tmp_path) as stats:
        for measure in MEASURES:
            loo = stats.results(measure).leave_one_out
            for s in range(5):
                with _fed(x, y, method, storage, tmp_path, skip=s) as without:
                    np.testing.assert_allclose(loo[s], without.residuals(measure), rtol=1e-11)


def _spd(rng, d, kappa=1e3):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    S = (q * np.logspace(0, -np.log10(kappa), d)) @ q.T
    return (S + S.T) / 2.0  # exactly symmetric


def test_cholesky_in_place_is_numpys_factor_and_restore_gives_the_matrix_back():
    rng = np.random.default_rng(6)
    for d in (1, 7, 64, 200):
        S = _spd(rng, d)
        A = S.copy()
        F, ok = linalg._cholesky(A)
        assert ok
        np.testing.assert_array_equal(np.tril(F), np.linalg.cholesky(S))
        np.testing.assert_array_equal(linalg._restore(F, np.diag(S)), S)
    indefinite = _spd(rng, 30)
    indefinite[5, 5] = -1.0
    F, ok = linalg._cholesky(indefinite.copy())
    assert not ok
    np.testing.assert_array_equal(linalg._restore(F, np.diag(indefinite)), indefinite)


def test_residual_fraction_with_a_workspace_equals_without():
    """One workspace across solves of different widths (live columns), regular
    and singular, one output and several: the numbers of fresh arrays."""
    rng = np.random.default_rng(8)
    work = linalg.Workspace()
    for d, outputs, singular in ((40, 1, False), (12, 1, True), (40, 5, False),
                                 (25, 5, True), (40, 1, False)):
        x = rng.standard_normal((300, d))
        if singular:
            x[:, 0] = x[:, 1] + x[:, 2]
        xc = x - x.mean(axis=0)
        t = xc[:, :outputs] @ rng.standard_normal((outputs, outputs)) \
            + rng.standard_normal((300, outputs))
        tc = t - t.mean(axis=0)
        S, B, sst = xc.T @ xc, xc.T @ tc, float(np.sum(tc * tc))
        live = np.ones(d, dtype=bool)
        live[d // 2] = d % 2 == 0  # a dead column in some
        before = S.copy()
        fresh = linalg.residual_fraction(S, B, sst, live, 1e-12)
        reused = linalg.residual_fraction(S, B, sst, live, 1e-12, work)
        assert reused == fresh
        np.testing.assert_array_equal(S, before)  # S is not written
        keep = np.flatnonzero(live)
        A = np.column_stack([np.ones(300), x[:, keep]])
        r = t - A @ np.linalg.lstsq(A, t, rcond=None)[0]
        assert fresh == pytest.approx(float(np.sum(r * r)) / sst, rel=1e-9)
