"""Two models compared on the probe (audit.compare.outputs), on the session's tiny
Llama and a noisy copy: every per-token figure against a direct numpy computation
over the full softmax, the stored record's path, and the errors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from audit.backends import open_backend
from audit.compare.divergence import PERCENTILES
from audit.compare.outputs import (
    accumulate_outputs,
    accumulate_several,
    compare_outputs,
    compare_outputs_with_bound,
    compare_with_record,
    record_reference,
)
from audit.corpus import load_corpus
from audit.errors import BackendError, ComparisonError
from audit.probe import probe_input
from audit.spec import ModelSpec, ProbeSpec, Spec
from audit.synthetic.damage import AddNoise

PROBE = ProbeSpec(sequences=12, length=10, shards=4)


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path):
    """(healthy backend, noisy backend, probe windows)."""
    spec = Spec(name="tiny", model=ModelSpec(path=str(tiny_model_dir)), probe=PROBE)
    healthy = open_backend(spec)
    healthy.load()
    noisy = healthy.with_model(AddNoise(0.3, seed=1).apply(healthy.causal_lm))
    windows = probe_input(spec, load_corpus(PROBE.corpus), healthy)
    return healthy, noisy, windows


def _direct(ref: np.ndarray, mod: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Figures from p = exp(x) / Σ exp(x), written out."""
    p = np.exp(ref - ref.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(mod - mod.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    r = np.arange(len(y))
    return {"kld": np.sum(p * np.log(p / q), axis=1), "rev": np.sum(q * np.log(q / p), axis=1),
            "same": p.argmax(1) == q.argmax(1), "dp": q[r, y] - p[r, y],
            "nll_ref": -np.log(p[r, y]), "nll_model": -np.log(q[r, y])}


@pytest.fixture
def exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Comparisons through the float64 path (the backends' float32 logits would
    otherwise take the float32 one)."""
    from audit.compare import divergence, outputs

    def float64_figures(ref, mod, targets, precision=None):
        return divergence.token_figures(ref, mod, targets, precision or "float64")

    monkeypatch.setattr(outputs, "token_figures", float64_figures)


def test_every_figure_equals_a_direct_softmax(pair, exact) -> None:
    healthy, noisy, windows = pair
    ref, mod, ys, shards = [], [], [], []
    for batch in windows.batches(5):
        ref.append(healthy.next_token_logits(batch.ids).astype(np.float64).reshape(-1, 264))
        mod.append(noisy.next_token_logits(batch.ids).astype(np.float64).reshape(-1, 264))
        ys.append(batch.ids[:, 1:].reshape(-1))
        shards.append(np.repeat(batch.shards, batch.ids.shape[1] - 1))
    y, shard = np.concatenate(ys), np.concatenate(shards)
    want = _direct(np.concatenate(ref), np.concatenate(mod), y)
    acc = accumulate_outputs(noisy, healthy, windows, batch_size=5)
    kld, dp, got_shard = acc.per_token()
    assert kld.size == 12 * 9 and np.array_equal(got_shard, shard)
    np.testing.assert_allclose(kld, want["kld"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(dp, want["dp"], rtol=0, atol=1e-10)
    r = acc.result()
    assert (r.tokens, r.shards) == (108, 4)
    for got, key in ((r.kld_reverse_mean, "rev"), (r.nll_ref_mean, "nll_ref"),
                     (r.nll_model_mean, "nll_model"), (r.same_top, "same")):
        assert got == pytest.approx(np.mean(want[key]), rel=0, abs=1e-10)
    assert r.ln_ppl_ratio == pytest.approx(np.mean(want["nll_model"] - want["nll_ref"]),
                                           abs=1e-10)
    assert r.rms_dp == pytest.approx(math.sqrt(np.mean(want["dp"] ** 2)), abs=1e-10)
    qs = [q for _, q in PERCENTILES]
    np.testing.assert_allclose(list(r.kld_percentiles.values()),
                               np.percentile(want["kld"], qs), rtol=0, atol=1e-10)
    np.testing.assert_allclose(list(r.dp_percentiles.values()),
                               np.percentile(want["dp"], qs), rtol=0, atol=1e-10)
    assert r.kld_mean > 1e-3 and 0 < r.same_top < 1 and r.kld_mean_se > 0


def test_a_model_against_itself_is_zero(pair) -> None:
    healthy, _, windows = pair
    r = compare_outputs(healthy, healthy, windows, batch_size=4)
    assert (r.kld_mean, r.same_top, r.rms_dp, r.ln_ppl_ratio) == (0.0, 1.0, 0.0, 0.0)
    assert r.kld_percentiles["max"] == 0.0


def test_the_float32_path_moves_the_means_by_less_than_1e_6(pair) -> None:
    from audit.compare import divergence
    from audit.compare.outputs import accumulate_several

    healthy, noisy, windows = pair
    fast = compare_outputs(noisy, healthy, windows, batch_size=5)   # float32 logits: float32
    exact = accumulate_several({"model": noisy}, healthy, windows, batch_size=5,
                               precision="float64")["model"][0].result()
    assert fast != exact                                            # two paths ...
    for name in ("kld_mean", "kld_reverse_mean", "rms_dp", "nll_ref_mean", "nll_model_mean"):
        assert getattr(fast, name) == pytest.approx(getattr(exact, name), rel=1e-6), name
    assert fast.same_top == exact.same_top
    # means of differences near 0 (6.7e-4 nats, 108 tokens): float32 exp's rounding
    # (about 5e-8 relative a term) moves them by a few 1e-9 nats
    assert fast.ln_ppl_ratio == pytest.approx(exact.ln_ppl_ratio, rel=0, abs=1e-8)
    assert fast.dp_mean == pytest.approx(exact.dp_mean, rel=0, abs=1e-8)
    ids = next(windows.batches(4)).ids
    ref = healthy.next_token_logits(ids).reshape(-1, 264)
    mod = noisy.next_token_logits(ids).reshape(-1, 264)
    y = ids[:, 1:].reshape(-1)
    one, two = divergence.token_figures(ref, mod, y), divergence.token_figures(ref, mod, y,
                                                                                "float64")
    assert np.array_equal(one.same_top, two.same_top)
    np.testing.assert_allclose(one.kld, two.kld, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(one.nll_model, two.nll_model, rtol=1e-6)


def test_the_stored_record_bounds_the_exact_comparison(pair, exact) -> None:
    healthy, noisy, windows = pair
    exact, bound = compare_outputs_with_bound(noisy, healthy, windows, top_k=8, batch_size=5)
    record = record_reference(healthy, windows, top_k=8, batch_size=5)
    stored = compare_with_record(noisy, record, windows, batch_size=7)  # other batches: same
    assert stored.kld_is_bound and bound.kld_is_bound and not exact.kld_is_bound
    for name in ("kld_mean", "kld_reverse_mean", "same_top", "rms_dp", "ln_ppl_ratio"):
        assert getattr(stored, name) == pytest.approx(getattr(bound, name), rel=1e-5, abs=1e-9)
    assert 0 < bound.kld_mean <= exact.kld_mean
    assert bound.kld_percentiles["max"] <= exact.kld_percentiles["max"]
    assert (bound.same_top, bound.rms_dp) == pytest.approx((exact.same_top, exact.rms_dp),
                                                           abs=1e-12)
    full = compare_with_record(noisy, record_reference(healthy, windows, top_k=264), windows)
    assert full.kld_mean == pytest.approx(exact.kld_mean, rel=1e-9)


def test_a_record_of_other_windows_is_refused(pair) -> None:
    healthy, noisy, windows = pair
    record = record_reference(healthy, windows, top_k=4)
    other = dataclasses.replace(windows, sha256="0" * 64)
    with pytest.raises(ComparisonError, match="made on other probe windows"):
        compare_with_record(noisy, record, other)
    short = record.rows(0, 50)
    with pytest.raises(ComparisonError, match="tokens differ from the probe's at token 45"):
        compare_with_record(noisy, short, windows, batch_size=5)


def test_several_models_in_one_pass_equal_one_at_a_time(pair) -> None:
    healthy, noisy, windows = pair
    accs = accumulate_several({"noisy": noisy, "self": healthy}, healthy, windows,
                              batch_size=5, top_k=8)
    alone, bound = compare_outputs_with_bound(noisy, healthy, windows, top_k=8, batch_size=5)
    assert accs["noisy"][0].result() == alone and accs["noisy"][1].result() == bound
    assert accs["self"][0].result().kld_mean == 0.0 == accs["self"][1].result().kld_mean


def test_a_model_without_a_head_has_no_logits_to_compare(pair) -> None:
    healthy, _, windows = pair
    body = healthy.with_model(healthy.causal_lm.model)  # the base model, no LM head
    with pytest.raises(BackendError, match="no logits to compare: the model handed over has "
                                           "no language-model head"):
        compare_outputs(body, healthy, windows)
