"""How far a model's next-token distribution moved from a reference's, token by
token, as llama.cpp's ``llama-perplexity --kl-divergence`` measures it.  Pure numpy.

Every scored token is a position the probe loss scores: in a sequence of t tokens,
position j < t − 1 predicting token j + 1.  With P the reference's softmax and Q
the model's over the whole vocabulary (V words), and y the correct next token:

- ``kld``          KL(P ‖ Q) = Σ_v P_v (log P_v − log Q_v), nats;
- ``kld_reverse``  KL(Q ‖ P), nats;
- ``same_top``     argmax P = argmax Q (ties: the lowest id, as ``numpy.argmax``);
- ``dp``           Δp = Q_y − P_y, the change of the correct token's probability;
- ``nll_ref``, ``nll_model``  −log P_y and −log Q_y, nats.

Sums are float64; log-softmax and exp are float64, or float32 for float32 logits
(:func:`token_figures`' ``precision``, measured to move the means by less than 1e-6
relative).  :class:`DivergenceAccumulator` adds the figures
of each batch to per-shard float64 sums (the probe's jackknife shards) and keeps the
per-token ``kld`` and ``dp`` (two floats a token) for exact percentiles.  Its
:class:`DivergenceResult` gives llama.cpp's summary:

- mean KLD ± SE and its percentiles (max, 99.9, 99, 95, 90, median, 10, 5, 1, min,
  ``numpy.percentile``'s linear interpolation);
- "same top p", the fraction of tokens whose top token agrees, with llama.cpp's
  binomial SE sqrt(p (1 − p) / n) and the shard jackknife's;
- mean and RMS Δp; ln(PPL(Q)/PPL(P)) = mean(nll_model − nll_ref).

Every standard error of a mean is the jackknife over shards
(:func:`audit.stats.jackknife.jackknife_se`): each figure recomputed with one shard's
tokens left out.  The 99th percentile's SE is the same delete-a-shard jackknife
(a shard is ~1/g of the tokens, large enough for a quantile's jackknife).

:func:`judge_divergence` turns :class:`DivergenceThresholds` into failure messages.
A figure fails when it lies beyond its threshold AND by more than ``max_sigma``
standard errors ((value − threshold) / se > max_sigma, the other way for
``min_same_top``); an unknown SE (one shard) counts as beyond ``max_sigma``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from audit.stats.jackknife import jackknife_se

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("max", 100.0), ("99.9", 99.9), ("99", 99.0), ("95", 95.0), ("90", 90.0),
    ("median", 50.0), ("10", 10.0), ("5", 5.0), ("1", 1.0), ("min", 0.0))
"""llama.cpp's percentiles of KLD and Δp, by the name it prints -> percent."""

_CHUNK_ELEMENTS = 1 << 22
"""Rows × vocabulary handled at once in float64 (32 MiB per array); an eighth of it
in float32 (2 MiB per array: the float32 path's five arrays stay in cache, about
20 % faster than 16 MiB chunks on SmolLM2's 49,152 words)."""


@dataclass(frozen=True)
class TokenFigures:
    """The figures of n scored tokens (every array float64 [n] but ``same_top``)."""

    kld: np.ndarray
    """KL(P ‖ Q), nats (a lower bound of it against a stored record)."""
    kld_reverse: np.ndarray
    """KL(Q ‖ P), nats (a lower bound against a stored record)."""
    same_top: np.ndarray
    """bool [n]: the two top tokens agree."""
    dp: np.ndarray
    """Q_y − P_y."""
    nll_ref: np.ndarray
    """−log P_y, nats."""
    nll_model: np.ndarray
    """−log Q_y, nats."""

    def __len__(self) -> int:
        return int(self.kld.shape[0])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis (a new array)."""
    x = np.array(logits, dtype=np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def token_figures(ref_logits: np.ndarray, model_logits: np.ndarray,
                  targets: np.ndarray, precision: str | None = None) -> TokenFigures:
    """The figures of the module docstring from two models' logits [n, V] (any float
    dtype) at n scored positions and the correct next tokens ``targets`` int [n].
    Works through the rows in chunks, so memory stays ~ a few × 32 MiB.

    ``precision``: ``float64`` (log-softmax, exp and sums in float64: the exact
    path), ``float32`` (:func:`_chunk_float32`: elementwise work in float32, every
    sum in float64), or None: float32 for float32 logits (what the backends give),
    float64 otherwise.  On SmolLM2's default probe the float32 path changes the
    means by less than 1e-6 relative and is several times faster
    (bench/bench_divergence.py, ``divergence.float32``)."""
    ref = np.asarray(ref_logits)
    mod = np.asarray(model_logits)
    y = np.asarray(targets, dtype=np.int64).reshape(-1)
    if ref.ndim != 2 or ref.shape != mod.shape or y.shape[0] != ref.shape[0]:
        raise ValueError(f"logits must be two arrays [n, V] of one shape with n targets: got "
                         f"{ref.shape}, {mod.shape} and {y.shape[0]} targets")
    n, vocab = ref.shape
    if n and (y.min() < 0 or y.max() >= vocab):
        raise ValueError(f"targets must be token ids in 0..{vocab - 1}")
    if precision is None:
        both = ref.dtype == np.float32 and mod.dtype == np.float32
        precision = "float32" if both else "float64"
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be float32 or float64, got {precision!r}")
    chunk = _chunk_float32 if precision == "float32" else _chunk_float64
    names = ("kld", "kld_reverse", "dp", "nll_ref", "nll_model", "same_top")
    out = {name: np.empty(n) for name in names[:-1]}
    out["same_top"] = np.empty(n, dtype=bool)
    elements = _CHUNK_ELEMENTS if precision == "float64" else _CHUNK_ELEMENTS // 8
    step = max(1, elements // max(vocab, 1))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        for name, values in zip(names, chunk(ref[rows], mod[rows], y[rows])):
            out[name][rows] = values
    return TokenFigures(**out)


def _chunk_float64(ref: np.ndarray, mod: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """(kld, kld_reverse, dp, nll_ref, nll_model, same_top) of c rows, all in float64."""
    lp = log_softmax(ref)                                             # [c, V]
    lq = log_softmax(mod)
    p, q = np.exp(lp), np.exp(lq)
    diff = lp - lq
    at = (np.arange(lp.shape[0]), y)
    return (np.einsum("cv,cv->c", p, diff), -np.einsum("cv,cv->c", q, diff),
            q[at] - p[at], -lp[at], -lq[at], np.argmax(ref, axis=1) == np.argmax(mod, axis=1))


def _chunk_float32(ref: np.ndarray, mod: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """The same figures with the elementwise work in float32 and every sum in float64.

    With m the row maximum, e = exp(x − m) and s = Σ e (float64), log P = x − m −
    log s; so with d = (x_ref − x_mod) − (m_ref − m_mod) (float32; the first
    difference is exact where the two logits are within a factor 2, Sterbenz),
    KL(P ‖ Q) = Σ e_ref d / s_ref − log s_ref + log s_mod and KL(Q ‖ P) =
    log s_ref − log s_mod − Σ e_mod d / s_mod.  d is small where the models agree,
    so the float32 rounding of the terms is relative to the divergence, not to
    the logits; the correct token's figures are float64 from its own logits."""
    rows = np.arange(ref.shape[0])
    at = (rows, y)
    r = np.asarray(ref, dtype=np.float32)
    m = np.asarray(mod, dtype=np.float32)
    arg_r, arg_m = np.argmax(r, axis=1), np.argmax(m, axis=1)         # [c]
    top_r = r[rows, arg_r][:, None]                                   # [c, 1]: the maxima
    top_m = m[rows, arg_m][:, None]
    d = np.subtract(r, m)                                             # [c, V]
    d -= top_r - top_m
    e_r = np.subtract(r, top_r)
    np.exp(e_r, out=e_r)
    e_m = np.subtract(m, top_m)
    np.exp(e_m, out=e_m)
    s_r = e_r.sum(axis=1, dtype=np.float64)
    s_m = e_m.sum(axis=1, dtype=np.float64)
    cross_r = np.multiply(e_r, d, out=e_r).sum(axis=1, dtype=np.float64)
    cross_m = np.multiply(e_m, d, out=e_m).sum(axis=1, dtype=np.float64)
    log_r, log_m = np.log(s_r), np.log(s_m)
    nll_r = log_r + top_r[:, 0].astype(np.float64) - r[at].astype(np.float64)
    nll_m = log_m + top_m[:, 0].astype(np.float64) - m[at].astype(np.float64)
    return (cross_r / s_r - log_r + log_m, log_r - log_m - cross_m / s_m,
            np.exp(-nll_m) - np.exp(-nll_r), nll_r, nll_m, arg_r == arg_m)


@dataclass(frozen=True)
class DivergenceResult:
    """llama.cpp's KL-divergence summary of one comparison (module docstring).
    KLD in nats, same-top a fraction in [0, 1], Δp a probability difference."""

    tokens: int
    """Scored tokens compared."""
    shards: int
    """Jackknife shards that hold tokens (SEs are NaN below 2)."""
    kld_mean: float
    kld_mean_se: float
    kld_percentiles: dict[str, float]
    """By llama.cpp's name (``max``, ``99.9``, ... ``median`` ... ``min``)."""
    kld_p99_se: float
    """Delete-a-shard jackknife SE of the 99th percentile."""
    kld_reverse_mean: float
    kld_reverse_mean_se: float
    same_top: float
    same_top_se: float
    """llama.cpp's binomial SE, sqrt(p (1 − p) / n)."""
    same_top_jackknife_se: float
    """The shard jackknife's SE (tokens of a window are not independent)."""
    dp_mean: float
    dp_mean_se: float
    rms_dp: float
    rms_dp_se: float
    dp_percentiles: dict[str, float]
    nll_ref_mean: float
    nll_model_mean: float
    ln_ppl_ratio: float
    """ln(PPL(Q)/PPL(P)) = mean(nll_model − nll_ref); reported, not gated (the loss
    gates judge it)."""
    ln_ppl_ratio_se: float
    kld_is_bound: bool = False
    """True against a stored token record: the KLDs are the coarse-grained lower
    bound (:mod:`audit.compare.token_record`), same-top and Δp are exact."""

    @property
    def kld_p99(self) -> float:
        return self.kld_percentiles["99"]

    @property
    def same_top_judged_se(self) -> float:
        """The larger of the binomial and jackknife SEs (NaN only when both are)."""
        values = [v for v in (self.same_top_se, self.same_top_jackknife_se) if not math.isnan(v)]
        return max(values) if values else math.nan

    def to_dict(self) -> dict:
        """Plain JSON types (NaN stays a float NaN; the JSON writer decides)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DivergenceResult:
        """The inverse of :meth:`to_dict`."""
        return cls(**{**data, "kld_percentiles": dict(data["kld_percentiles"]),
                      "dp_percentiles": dict(data["dp_percentiles"])})


_SUMS = ("count", "kld", "kld_reverse", "same_top", "dp", "dp2", "nll_ref", "nll_model",
         "nll_diff")


@dataclass
class DivergenceAccumulator:
    """Per-shard float64 sums of the token figures, and the per-token ``kld`` and
    ``dp`` with their shard, for the percentiles.  ``update`` per batch, ``merge``
    across processes, ``result`` at the end."""

    shards: int
    """The probe's jackknife shard count g (shard ids 0..g-1)."""
    kld_is_bound: bool = False
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    _kld: list[np.ndarray] = field(default_factory=list, repr=False)
    _dp: list[np.ndarray] = field(default_factory=list, repr=False)
    _shard: list[np.ndarray] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.shards, int) and self.shards >= 1):
            raise ValueError(f"shards must be an integer >= 1, got {self.shards!r}")
        for name in _SUMS:
            self.sums.setdefault(name, np.zeros(self.shards))

    @property
    def tokens(self) -> int:
        return int(self.sums["count"].sum())

    def update(self, figures: TokenFigures, shard) -> None:
        """Add ``figures`` of n tokens; ``shard`` is one shard id for all of them or
        an int array [n]."""
        n = len(figures)
        where = np.broadcast_to(np.asarray(shard, dtype=np.int64), (n,))
        if n and (where.min() < 0 or where.max() >= self.shards):
            raise ValueError(f"shard ids must lie in 0..{self.shards - 1}")
        parts = {"count": np.ones(n), "kld": figures.kld, "kld_reverse": figures.kld_reverse,
                 "same_top": figures.same_top.astype(np.float64), "dp": figures.dp,
                 "dp2": figures.dp * figures.dp, "nll_ref": figures.nll_ref,
                 "nll_model": figures.nll_model, "nll_diff": figures.nll_model - figures.nll_ref}
        for name, values in parts.items():
            self.sums[name] += np.bincount(where, weights=values, minlength=self.shards)
        self._kld.append(np.asarray(figures.kld, dtype=np.float64).copy())
        self._dp.append(np.asarray(figures.dp, dtype=np.float64).copy())
        self._shard.append(where.astype(np.int32))

    def merge(self, other: DivergenceAccumulator) -> None:
        """Add another accumulator's tokens (same shard count and kind of KLD)."""
        if other.shards != self.shards or other.kld_is_bound != self.kld_is_bound:
            raise ValueError("cannot merge accumulators of different shard counts or KLD kinds")
        for name in _SUMS:
            self.sums[name] += other.sums[name]
        self._kld += other._kld
        self._dp += other._dp
        self._shard += other._shard

    def per_token(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kld, dp, shard) of every token so far, in update order."""
        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts) if parts else np.empty(0, dtype)

        return (cat(self._kld, np.float64), cat(self._dp, np.float64),
                cat(self._shard, np.int32))

    def result(self) -> DivergenceResult:
        """The summary; ``ValueError`` when no token was added."""
        s = self.sums
        n = float(s["count"].sum())
        if n == 0:
            raise ValueError("no scored token was compared")
        filled = np.flatnonzero(s["count"] > 0)

        def mean_and_se(name: str, transform=None) -> tuple[float, float]:
            f = transform or (lambda x: x)
            total = s[name].sum()
            if filled.size < 2:
                return float(f(total / n)), math.nan
            loo = [f((total - s[name][i]) / (n - s["count"][i])) for i in filled]
            se = jackknife_se(np.array(loo))
            return float(f(total / n)), float(se)

        kld, dp, shard = self.per_token()
        kld_pct = _percentiles(kld)
        dp_pct = _percentiles(dp)
        p99_loo = ([np.percentile(kld[shard != i], 99.0) for i in filled]
                   if filled.size >= 2 else [])
        kld_mean, kld_se = mean_and_se("kld")
        rev_mean, rev_se = mean_and_se("kld_reverse")
        same, same_jk = mean_and_se("same_top")
        dp_mean, dp_se = mean_and_se("dp")
        rms, rms_se = mean_and_se("dp2", np.sqrt)
        ln_ratio, ln_se = mean_and_se("nll_diff")
        p99_se = jackknife_se(np.array(p99_loo)) if len(p99_loo) >= 2 else math.nan
        return DivergenceResult(
            tokens=int(n), shards=int(filled.size), kld_mean=kld_mean, kld_mean_se=kld_se,
            kld_percentiles=kld_pct, kld_p99_se=float(p99_se),
            kld_reverse_mean=rev_mean, kld_reverse_mean_se=rev_se,
            same_top=same, same_top_se=math.sqrt(max(same * (1.0 - same), 0.0) / n),
            same_top_jackknife_se=same_jk, dp_mean=dp_mean, dp_mean_se=dp_se,
            rms_dp=rms, rms_dp_se=rms_se, dp_percentiles=dp_pct,
            nll_ref_mean=float(s["nll_ref"].sum() / n),
            nll_model_mean=float(s["nll_model"].sum() / n),
            ln_ppl_ratio=ln_ratio, ln_ppl_ratio_se=ln_se, kld_is_bound=self.kld_is_bound)


def _percentiles(values: np.ndarray) -> dict[str, float]:
    got = np.percentile(values, [q for _, q in PERCENTILES])
    return {name: float(v) for (name, _), v in zip(PERCENTILES, got)}


# -- judging -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DivergenceThresholds:
    """The ``divergence:`` spec section's thresholds (None: not judged)."""

    max_kld_mean: float | None = None
    """Largest mean KL(ref ‖ model), nats."""
    max_kld_p99: float | None = None
    """Largest 99th percentile of the per-token KL, nats."""
    min_same_top: float | None = None
    """Smallest fraction of tokens whose top token agrees, in [0, 1]."""
    max_rms_dp: float | None = None
    """Largest RMS change of the correct token's probability."""
    max_sigma: float = 4.0
    """A figure fails only when beyond its threshold by more than this many SEs."""


DEFAULT_THRESHOLDS = DivergenceThresholds(max_kld_mean=0.05, max_kld_p99=0.5, min_same_top=0.9,
                                          max_rms_dp=0.1, max_sigma=4.0)
"""The proposed defaults of the ``divergence:`` section, between a conversion or
8-bit quantisation (must pass) and 3- and 4-bit quantisation (must fail).  Measured
on SmolLM2-135M's default probe (12,192 tokens) against the healthy model, with
:class:`audit.synthetic.damage.Quantize` (g = 32; tests/test_divergence_smollm2.py):
KLD mean / p99 / same top / RMS Δp = 8 bits 0.00152 / 0.0080 / 97.9 % / 0.0083;
1 %-noise sibling 0.0068 / 0.031 / 94.9 % / 0.019 (pass); 4 bits 0.525 / 2.01 /
63.3 % / 0.153; 3 bits 2.45 / 7.61 / 24.7 % / 0.331 (fail on every figure, by 20
to 100 σ)."""


def judge_divergence(result: DivergenceResult,
                     thresholds: DivergenceThresholds) -> list[str]:
    """One message per figure that fails (empty: the comparison passes).  A figure
    fails when beyond its threshold AND (beyond − threshold) / se > ``max_sigma``;
    an unknown SE counts as beyond.  Each message names the figure, its SE, the
    threshold and the sigma."""
    bound = " (a lower bound from the stored token record)" if result.kld_is_bound else ""
    rows = (
        ("KLD mean", result.kld_mean, result.kld_mean_se, "max_kld_mean",
         thresholds.max_kld_mean, 1.0, " nats" + bound),
        ("KLD p99", result.kld_p99, result.kld_p99_se, "max_kld_p99",
         thresholds.max_kld_p99, 1.0, " nats" + bound),
        ("same top", result.same_top, result.same_top_judged_se, "min_same_top",
         thresholds.min_same_top, -1.0, ""),
        ("RMS Δp", result.rms_dp, result.rms_dp_se, "max_rms_dp",
         thresholds.max_rms_dp, 1.0, ""),
    )
    messages = []
    for name, value, se, key, limit, sign, unit in rows:
        if limit is None:
            continue
        failed, why = _beyond(value, se, limit, sign, thresholds.max_sigma)
        if failed:
            word = ">" if sign > 0 else "<"
            messages.append(f"{name} {value:.6g} ± {se:.2g}{unit} {word} {key} {limit!r}: {why}")
    return messages


def _beyond(value: float, se: float, limit: float, sign: float,
            max_sigma: float) -> tuple[bool, str]:
    """(fails, why) for one figure; ``sign`` +1 for a maximum, −1 for a minimum."""
    if math.isnan(value):
        return True, "the figure is NaN"
    excess = sign * (value - limit)
    if excess <= 0:
        return False, ""
    if math.isnan(se):
        return True, f"standard error unknown, counted as beyond max_sigma {max_sigma!r}"
    sigma = math.inf if se == 0 else excess / se
    if sigma <= max_sigma:
        return False, ""
    return True, f"{sigma:.3g} σ beyond it > max_sigma {max_sigma!r}"
