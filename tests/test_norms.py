"""Feature normalisations against direct formulas and, when torch is installed,
against freshly initialised torch norms."""

from __future__ import annotations

import numpy as np
import pytest

from audit.errors import StatsError
from audit.norms import NormInfo, apply_normalization


def hidden_states(dtype=np.float64, seed=0) -> np.ndarray:
    """[layers=4, batch=2, tokens=3, d=16] with non-zero means and an outlier dimension."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 2.0, size=(4, 2, 3, 16))
    x[..., 5] *= 300.0
    return x.astype(dtype)


def rms_formula(x, eps):
    return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps)


def layer_formula(x, eps):
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt(np.mean(centred ** 2, axis=-1, keepdims=True) + eps)


@pytest.mark.parametrize("kind, formula", [("rms", rms_formula), ("layer", layer_formula)])
def test_init_norm_matches_the_formula_and_keeps_the_last_layer(kind, formula):
    x = hidden_states()
    before = x.copy()
    out = apply_normalization("init_norm", x, NormInfo(kind, 1e-5))
    assert out.shape == x.shape and out.dtype == np.float64
    np.testing.assert_allclose(out[:-1], formula(x[:-1], 1e-5), rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(out[-1], x[-1])
    np.testing.assert_array_equal(x, before)  # input untouched
    assert not np.shares_memory(out, x)


def test_eps_enters_under_the_square_root():
    x = np.array([[[3.0, 4.0]], [[1.0, 1.0]]])  # mean square of layer 0 is 12.5
    out = apply_normalization("init_norm", x, NormInfo("rms", 0.5))
    np.testing.assert_allclose(out[0, 0], [3.0 / np.sqrt(13.0), 4.0 / np.sqrt(13.0)], rtol=1e-15)
    out = apply_normalization("init_norm", x, NormInfo("layer", 0.75))  # variance 0.25
    np.testing.assert_allclose(out[0, 0], [-0.5, 0.5], rtol=1e-15)


def test_standardize_gives_zero_mean_unit_std_and_keeps_the_last_layer():
    x = hidden_states()
    before = x.copy()
    out = apply_normalization("standardize", x)
    np.testing.assert_allclose(out[:-1].mean(axis=-1), 0.0, atol=1e-13)
    np.testing.assert_allclose(out[:-1].std(axis=-1), 1.0, rtol=1e-13)
    np.testing.assert_allclose(out[:-1], layer_formula(x[:-1], 0.0), rtol=1e-13)
    np.testing.assert_array_equal(out[-1], x[-1])
    np.testing.assert_array_equal(x, before)


def test_standardize_turns_a_constant_vector_into_zeros():
    x = np.ones((3, 2, 8), dtype=np.float32) * np.float32(0.1)
    with np.errstate(all="raise"):
        out = apply_normalization("standardize", x)
    np.testing.assert_array_equal(out[:-1], 0.0)
    np.testing.assert_array_equal(out[-1], x[-1])


def test_zero_vector_under_init_norm_stays_zero():
    x = np.zeros((2, 1, 4))
    for kind in ("rms", "layer"):
        with np.errstate(all="raise"):
            out = apply_normalization("init_norm", x, NormInfo(kind, 1e-6))
        np.testing.assert_array_equal(out, 0.0)


def test_none_is_the_identity():
    x = hidden_states(np.float32)
    out = apply_normalization("none", x)
    np.testing.assert_array_equal(out, x)
    assert out.dtype == np.float32


@pytest.mark.parametrize("name, norm", [("init_norm", NormInfo("rms", 1e-6)),
                                        ("init_norm", NormInfo("layer", 1e-5)),
                                        ("standardize", None)])
def test_float32_stays_float32_and_close_to_float64(name, norm):
    x64 = hidden_states()
    x32 = x64.astype(np.float32)
    out32 = apply_normalization(name, x32, norm)
    out64 = apply_normalization(name, x64, norm)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, out64, rtol=2e-6, atol=2e-6)
    out16 = apply_normalization(name, x32.astype(np.float16), norm)
    assert out16.dtype == np.float32


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_matches_fresh_torch_norms(kind):
    torch = pytest.importorskip("torch")
    x = hidden_states(np.float32, seed=1)
    eps = 1e-6 if kind == "rms" else 1e-5
    d = x.shape[-1]
    module = torch.nn.RMSNorm(d, eps=eps) if kind == "rms" else torch.nn.LayerNorm(d, eps=eps)
    with torch.no_grad():
        expected = module(torch.from_numpy(x[:-1])).numpy()
    out = apply_normalization("init_norm", x, NormInfo(kind, eps))
    np.testing.assert_allclose(out[:-1], expected, rtol=1e-5, atol=1e-5)


def test_errors():
    x = hidden_states()
    with pytest.raises(StatsError) as info:
        apply_normalization("layernorm", x)
    assert str(info.value) == ("unknown normalization 'layernorm': expected one of init_norm, "
                               "standardize, none")
    with pytest.raises(StatsError) as info:
        apply_normalization("init_norm", x)
    assert str(info.value) == ("init_norm needs the model's final norm (kind and eps): the backend does "
                               "not know this architecture; set `model.norm: {kind, eps}` in the spec")
    with pytest.raises(StatsError, match=r"^hidden states must be floating point, got dtype int64$"):
        apply_normalization("none", np.ones((2, 3), dtype=np.int64))
    with pytest.raises(StatsError,
                       match=r"^hidden states must have shape \[layers, \.\.\., d\], got shape \(3,\)$"):
        apply_normalization("standardize", np.ones(3))
    with pytest.raises(StatsError, match=r"^unknown norm kind 'batch': expected one of rms, layer$"):
        NormInfo("batch", 1e-5)
    for eps in (0.0, -1e-5, float("nan"), "1e-5"):
        with pytest.raises(StatsError, match=r"^norm eps must be a finite number > 0, got "):
            NormInfo("rms", eps)


@pytest.mark.parametrize("name", ["init_norm", "standardize", "none"])
def test_in_place_equals_a_new_array(name):
    x = hidden_states(np.float32, seed=2)
    expected = apply_normalization(name, x, NormInfo("rms", 1e-6))
    work = x.copy()
    result = apply_normalization(name, work, NormInfo("rms", 1e-6), out=work)
    assert result is work
    np.testing.assert_array_equal(work, expected)


def test_out_must_match_shape_and_dtype():
    x = hidden_states(np.float32)
    with pytest.raises(StatsError) as info:
        apply_normalization("init_norm", x, NormInfo("rms", 1e-6), out=np.empty(x.shape))
    assert str(info.value) == f"out must be a float32 array of shape {x.shape}, got float64 {x.shape}"
