"""Feature normalisations applied to hidden states before the statistics.

Pure numpy functions of a batch of hidden states ``[layers, ..., d]`` (layer 0 = the
embedding output, the last layer = the model's final-norm output).  Every
normalisation leaves the last layer untouched: it already carries the model's final
norm, and the reference code does the same.

- ``init_norm`` (the reference, "initialized-LN"): every layer but the last passes a
  freshly initialised copy of the model's final norm, with unit scale, zero bias and
  the model's epsilon:
    rms:   y = x / sqrt(mean_d(x²) + eps)
    layer: y = (x - mean_d(x)) / sqrt(var_d(x) + eps), var biased (divides by d),
           as torch.nn.LayerNorm.
  (Gemma's RMSNorm multiplies by 1 + weight; its fresh copy has weight 0, which is
  the same unit scale.)
- ``standardize`` (the paper's ablation): every layer but the last gets per-token
  zero mean and unit (population, ddof=0) standard deviation over the feature axis,
  with no epsilon.  A constant token vector (std 0) becomes all zeros, as
  sklearn's StandardScaler does for a zero-variance column.
- ``none``: the hidden states as they are.

Precision: float64 input is processed in float64; float32 and float16 input gives
float32 output.  The per-token statistics (mean, mean square, variance) are always
accumulated in float64 (a reduction with ``dtype=float64`` reads the float32 data
in chunks and makes no full float64 copy), then the scale is applied in the output
dtype.  torch's RMSNorm and LayerNorm keep these statistics in float32; the two
agree to float32 rounding (relative differences of order 1e-7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from audit.errors import StatsError

NORMALIZATIONS = ("init_norm", "standardize", "none")
"""The names ``normalization`` takes, in the order of the docs."""
NORM_KINDS = ("rms", "layer")
"""Final-norm kinds: ``rms`` (RMSNorm) and ``layer`` (LayerNorm)."""


@dataclass(frozen=True)
class NormInfo:
    """The model's final norm, as ``init_norm`` copies it."""

    kind: str
    """``rms`` (RMSNorm) or ``layer`` (LayerNorm)."""
    eps: float
    """The norm's epsilon, a finite number > 0 (added to the mean square or variance)."""

    def __post_init__(self) -> None:
        if self.kind not in NORM_KINDS:
            raise StatsError(f"unknown norm kind {self.kind!r}: expected one of {', '.join(NORM_KINDS)}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise StatsError(f"norm eps must be a finite number > 0, got {self.eps!r}")


def apply_normalization(name: str, hidden, norm: NormInfo | None = None, *,
                        out: np.ndarray | None = None) -> np.ndarray:
    """Normalise every layer but the last of ``hidden`` [layers, ..., d].

    ``name``: ``init_norm`` (needs ``norm``), ``standardize`` or ``none``.
    Returns an array of the same shape (float32 for float16/float32 input, float64
    for float64).  The result goes to ``out`` when given (it may be ``hidden``
    itself, of that dtype: the pipeline normalises the backend's fresh array in
    place and so allocates nothing per batch); otherwise to a new array, and
    ``hidden`` is not modified.  For ``none`` without ``out`` the result may be
    ``hidden`` itself.  Layers are processed one at a time, so temporaries stay
    the size of one layer.  Raises StatsError for an unknown name, a missing
    ``norm``, or input that is not a floating-point array with at least 2
    dimensions.
    """
    if name not in NORMALIZATIONS:
        raise StatsError(f"unknown normalization {name!r}: expected one of {', '.join(NORMALIZATIONS)}")
    hidden = np.asarray(hidden)
    if not np.issubdtype(hidden.dtype, np.floating):
        raise StatsError(f"hidden states must be floating point, got dtype {hidden.dtype}")
    if hidden.ndim < 2:
        raise StatsError(f"hidden states must have shape [layers, ..., d], got shape {hidden.shape}")
    dtype = np.float64 if hidden.dtype == np.float64 else np.float32
    if out is not None and (out.shape != hidden.shape or out.dtype != dtype):
        raise StatsError(f"out must be a {np.dtype(dtype).name} array of shape {hidden.shape}, "
                         f"got {out.dtype} {out.shape}")
    if name == "none":
        if out is None:
            return hidden.astype(dtype, copy=False)
        out[...] = hidden
        return out
    if name == "init_norm":
        if norm is None:
            raise StatsError("init_norm needs the model's final norm (kind and eps): the backend "
                             "does not know this architecture; set `model.norm: {kind, eps}` in the spec")
        if norm.kind == "rms":
            def one_layer(x):
                return _rms_norm(x, norm.eps, dtype)
        else:
            def one_layer(x):
                return _standardize(x, norm.eps, dtype)
    else:
        def one_layer(x):
            return _standardize(x, 0.0, dtype)
    if out is None:
        out = np.empty(hidden.shape, dtype=dtype)
    for layer in range(hidden.shape[0] - 1):
        out[layer] = one_layer(hidden[layer])
    if out is not hidden:
        out[-1] = hidden[-1]  # the last layer already carries the model's final norm
    return out


def _rms_norm(x: np.ndarray, eps: float, dtype) -> np.ndarray:
    """x / sqrt(mean_d(x²) + eps), statistics in float64."""
    x = x.astype(dtype, copy=False)
    mean_square = np.mean(np.square(x), axis=-1, keepdims=True, dtype=np.float64)  # [..., 1]
    return x * (1.0 / np.sqrt(mean_square + eps)).astype(dtype)


def _standardize(x: np.ndarray, eps: float, dtype) -> np.ndarray:
    """(x - mean_d(x)) / sqrt(var_d(x) + eps), biased variance, statistics in float64.
    With eps = 0 a zero variance divides by 1 instead (the centred vector is 0)."""
    x = x.astype(dtype, copy=False)
    mean = np.mean(x, axis=-1, keepdims=True, dtype=np.float64)  # [..., 1]
    centred = x - mean.astype(dtype)
    variance = np.mean(np.square(centred), axis=-1, keepdims=True, dtype=np.float64)
    denominator = np.sqrt(variance + eps)
    denominator[denominator == 0] = 1.0
    return centred * (1.0 / denominator).astype(dtype)
