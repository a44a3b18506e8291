"""The stored baseline's token record (audit.compare.token_record): the coarse-grained
KL never exceeds the exact one (random and adversarial logits, Hypothesis), equals it
when k is the vocabulary, same-top and Δp are exact, and the file round trip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from audit.compare.divergence import token_figures
from audit.compare.token_record import (
    RECORD_FORMAT,
    TokenRecord,
    bound_figures,
    load_token_record,
    record_tokens,
    save_token_record,
)
from audit.errors import ComparisonError

VOCAB = 40


def _pair(n: int = 30, vocab: int = VOCAB, scale: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 3, (n, vocab))
    return ref, ref + rng.normal(0, scale, (n, vocab)), rng.integers(0, vocab, n)


def _check_bound(ref: np.ndarray, mod: np.ndarray, y: np.ndarray, k: int,
                 mass: float | None = None, max_k: int = 8) -> None:
    exact = token_figures(ref, mod, y)
    bound = bound_figures(record_tokens(ref, y, 0, top_k=k, mass=mass, max_k=max_k), mod)
    slack = 1e-12 * (1.0 + exact.kld)
    assert np.all(bound.kld <= exact.kld + slack)
    assert np.all(bound.kld_reverse <= exact.kld_reverse + 1e-12 * (1.0 + exact.kld_reverse))
    assert np.all(bound.kld >= -1e-12)
    np.testing.assert_array_equal(bound.same_top, exact.same_top)
    np.testing.assert_allclose(bound.dp, exact.dp, rtol=0, atol=1e-13)
    np.testing.assert_allclose(bound.nll_ref, exact.nll_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bound.nll_model, exact.nll_model, rtol=0, atol=1e-12)


_logits = arrays(np.float64, (3, VOCAB), elements=st.floats(-60, 60, allow_nan=False))


@given(ref=_logits, mod=_logits, k=st.integers(1, VOCAB), target=st.integers(0, VOCAB - 1))
def test_bound_never_exceeds_the_exact_kl(ref, mod, k, target) -> None:
    _check_bound(ref, mod, np.full(3, target), k)


@given(k=st.integers(1, VOCAB - 1), spike=st.floats(0, 80), seed=st.integers(0, 2 ** 16))
def test_bound_on_adversarial_logits(k, spike, seed) -> None:
    """Ties everywhere, a candidate that moves all its mass into the reference's tail,
    and one-hot-like distributions."""
    rng = np.random.default_rng(seed)
    ref = np.round(rng.normal(0, 2, (4, VOCAB)))           # many ties
    mod = ref.copy()
    mod[0, np.argsort(-ref[0])[k:]] += spike                  # mass into the tail
    mod[1] = -ref[1]                                          # everything reversed
    ref[2, 0] = mod[2, 0] = 1e3                               # one-hot
    mod[3] = ref[3]                                           # identical
    _check_bound(ref, mod, rng.integers(0, VOCAB, 4), k)


def test_equal_to_the_exact_kl_when_k_is_the_vocabulary() -> None:
    ref, mod, y = _pair()
    exact = token_figures(ref, mod, y)
    record = record_tokens(ref, y, 0, top_k=VOCAB + 10)  # capped at V
    assert record.top_k == VOCAB and np.all(record.tail_logp == -np.inf)
    bound = bound_figures(record, mod)
    np.testing.assert_allclose(bound.kld, exact.kld, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bound.kld_reverse, exact.kld_reverse, rtol=1e-12, atol=1e-14)


def test_the_bound_tightens_with_k_and_is_zero_on_the_same_model() -> None:
    ref, mod, y = _pair(n=50, scale=2.0)
    exact = token_figures(ref, mod, y).kld.mean()
    means = [bound_figures(record_tokens(ref, y, 0, top_k=k), mod).kld.mean()
             for k in (1, 4, 16, VOCAB)]
    assert means == sorted(means) and means[-1] == pytest.approx(exact, rel=1e-12)
    assert 0 < means[0] < 0.5 * exact
    same = bound_figures(record_tokens(ref, y, 0, top_k=4), ref)
    assert np.all(same.kld == 0) and np.all(same.dp == 0) and same.same_top.all()


def test_record_contents() -> None:
    ref = np.array([[0.0, 2.0, 1.0, 2.0, -1.0]])
    record = record_tokens(ref, np.array([2]), 7, top_k=2)
    lp = ref[0] - np.log(np.exp(ref[0]).sum())
    np.testing.assert_array_equal(record.top_ids, [[1, 3]])  # a tie: lowest id first
    np.testing.assert_allclose(record.top_logp, [[lp[1], lp[3]]], rtol=1e-15)
    assert record.tail_logp[0] == pytest.approx(np.log(np.exp(lp[[0, 2, 4]]).sum()), rel=1e-14)
    assert record.target_logp[0] == pytest.approx(lp[2], rel=1e-15)
    assert (record.top[0], record.shard[0], record.target[0]) == (1, 7, 2)


def test_file_round_trip_without_pickle(tmp_path) -> None:
    ref, mod, y = _pair(n=25)
    parts = [record_tokens(ref[:10], y[:10], 0), record_tokens(ref[10:], y[10:], 1)]
    record = TokenRecord.concatenate(parts, meta={**parts[0].meta, "windows_sha256": "ab"})
    path = save_token_record(record, tmp_path / "deep" / "base.tokens.npz")
    back = load_token_record(path)
    for name in ("top_ids", "top_logp", "tail_logp", "target", "target_logp", "top", "shard"):
        np.testing.assert_array_equal(getattr(back, name), getattr(record, name))
    assert back.meta == {"format": RECORD_FORMAT, "top_k": 32,
                         "vocab_size": VOCAB, "windows_sha256": "ab"}
    np.testing.assert_array_equal(bound_figures(back.rows(10, 25), mod[10:]).kld,
                                  bound_figures(parts[1], mod[10:]).kld)
    assert [p.name for p in path.parent.iterdir()] == ["base.tokens.npz"]


def test_bad_files_and_vocabularies_are_comparison_errors(tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ComparisonError, match=r"bad.npz' is not a readable token record"):
        load_token_record(bad)
    ref, mod, y = _pair(n=3)
    with pytest.raises(ComparisonError, match=r"holds 3 tokens over a vocabulary of 40"):
        bound_figures(record_tokens(ref, y, 0), mod[:, :-1])


@given(ref=_logits, mod=_logits, k=st.integers(1, 4), max_k=st.integers(1, VOCAB),
       mass=st.floats(0.01, 1.0), target=st.integers(0, VOCAB - 1))
def test_adaptive_bound_never_exceeds_the_exact_kl(ref, mod, k, max_k, mass, target) -> None:
    _check_bound(ref, mod, np.full(3, target), k, mass=mass, max_k=max_k)


def test_adaptive_k_keeps_as_many_ids_as_reach_the_mass() -> None:
    p = np.array([[0.5, 0.3, 0.1, 0.05, 0.05], [0.9, 0.04, 0.03, 0.02, 0.01]])
    record = record_tokens(np.log(p), np.array([0, 1]), 0, top_k=1, mass=0.85, max_k=4)
    np.testing.assert_array_equal(record.top_ids, [[0, 1, 2], [0, -1, -1]])
    assert record.top_logp[1, 1] == -np.inf and record.meta["mass"] == 0.85
    assert record.tail_logp[0] == pytest.approx(np.log(0.1), rel=1e-12)
    assert record.tail_logp[1] == pytest.approx(np.log(0.1), rel=1e-12)
    capped = record_tokens(np.log(p), np.array([0, 1]), 0, top_k=1, mass=1.0, max_k=2)
    np.testing.assert_array_equal(capped.top_ids, [[0, 1], [0, 1]])


def test_adaptive_k_tightens_the_bound_on_flat_distributions(tmp_path) -> None:
    ref, mod, y = _pair(n=60, vocab=400, scale=0.5, seed=5)
    ref[:30] *= 0.1                                           # half the tokens nearly flat
    exact = token_figures(ref, mod, y).kld.mean()
    fixed = bound_figures(record_tokens(ref, y, 0, top_k=8), mod).kld.mean()
    record = record_tokens(ref, y, 0, top_k=8, mass=0.9, max_k=300)
    adaptive = bound_figures(record, mod).kld.mean()
    assert fixed < adaptive <= exact and adaptive / exact > 0.85 > fixed / exact
    kept = (record.top_ids >= 0).sum(axis=1)
    assert kept[:30].mean() > 4 * kept[30:].mean() and kept.min() >= 8
    back = load_token_record(save_token_record(record, tmp_path / "r.npz"))
    np.testing.assert_array_equal(back.top_ids, record.top_ids)
    assert bound_figures(back, mod).kld.mean() == adaptive
    both = TokenRecord.concatenate([record_tokens(ref[:2], y[:2], 0), record.rows(2, 60)])
    assert both.top_k == record.top_k and np.all(both.top_ids[:2, 32:] == -1)
    assert np.all(both.top_logp[:2, 32:] == -np.inf)


def test_ids_are_stored_as_uint16_where_the_vocabulary_fits(tmp_path) -> None:
    """A vocabulary below 65535 ids writes ``top_ids`` as uint16 (padding 65535),
    a larger one as int32; both read back as int32 with padding -1."""
    ref, _, y = _pair(n=20, vocab=300, seed=3)
    ref[:10] *= 0.05                                       # flat rows keep more ids: padding
    record = record_tokens(ref, y, 0, top_k=4, mass=0.5, max_k=200)
    assert (record.top_ids == -1).any()
    path = save_token_record(record, tmp_path / "small.npz")
    with np.load(path, allow_pickle=False) as archive:
        assert archive["top_ids"].dtype == np.uint16
    back = load_token_record(path)
    assert back.top_ids.dtype == np.int32
    np.testing.assert_array_equal(back.top_ids, record.top_ids)
    wide = TokenRecord(**{name: getattr(record, name) for name in (
        "top_ids", "top_logp", "tail_logp", "target", "target_logp", "top", "shard")},
                       meta={**record.meta, "vocab_size": 70_000})
    with np.load(save_token_record(wide, tmp_path / "wide.npz"), allow_pickle=False) as archive:
        assert archive["top_ids"].dtype == np.int32
    np.testing.assert_array_equal(load_token_record(tmp_path / "wide.npz").top_ids,
                                  record.top_ids)
