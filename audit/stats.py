"""Streaming, mergeable, sharded per-layer statistics for the prediction residual.

:class:`LayerStats` keeps only additive sufficient statistics (float64), in
``shards`` independent parts, so that

* memory does not grow with the number of tokens: ``token_id`` keeps
  shards × layers × (d+1)² float64 values (plus vectors of length d; ``"qr"``:
  (d+2)²); the
  class-based measures add, per shard and layer, d values per distinct target;
* two accumulators merge exactly (``a + b``), for extraction split over
  processes or machines;
* every measure's jackknife uses leave-one-shard-out values obtained from the
  shards' statistics (the total minus one shard's sums, or with ``"qr"`` a
  combination of the other shards' factors), without refitting.

Measures (METHOD.md defines them; ``residuals(measure)`` gives one value per layer):

``token_id``
    PR = SS_res / SS_tot of an in-sample OLS fit with intercept from the layer's
    features to the next-token id (the paper's measure; what lstsq or sklearn's
    ``LinearRegression`` compute).
``shuffled_token_id``
    The same with the distinct ids seen (sorted) permuted by
    ``numpy.random.default_rng(shuffle_seed).permutation(k)``: sorted id i maps to
    ``sorted_ids[perm[i]]``.  Applied from per-class statistics when results are
    asked for, so it does not depend on batch order; leave-one-out values use the
    mapping of the whole accumulator.
``one_hot``
    Multi-output OLS on the one-hot target: total SS_res / total SS_tot.
``separation``
    Separation fuzziness D = tr(SS_w · SS_b⁺), class-size-weighted SS_b.

Numerics.  Sums are taken around a fixed per-layer shift (the first batch's mean)
so that large means cost no precision; merging accumulators with different
shifts converts the sums exactly (in exact arithmetic).  Two ways to accumulate
the feature scatter, chosen with ``method``:

``"gram"`` (default)
    Gram matrices Σ(x−a)(x−a)ᵀ, one symmetric rank-k update per batch and layer
    (BLAS dsyrk: d² multiply-adds per token and layer, the cost that matters).
    The solve scales columns to unit variance, uses a Cholesky factorisation and
    falls back to the minimum-norm least-squares solution (eigendecomposition,
    relative eigenvalue cutoff ``max(d, 32) × eps``) when the scatter is singular.
    A Gram matrix squares the condition number κ of the centred, column-scaled
    features: PR matches ``lstsq`` to about κ² × 1e-16 relative (≤ 1e-8 for
    κ ≤ 1e3; tests/test_stats.py asserts it).
``"qr"``
    Triangular QR factors of [1 | x−a | y−c], updated per batch by a Householder
    QR of the factor stacked on the batch (about 2.75× the flops of the Gram
    update at a third of its speed: about 7× its time, bench/bench_engine.py),
    combined across shards and accumulators by stacking factors.  Leave-one-out
    factors come from prefix and suffix combinations (3 small factorisations per
    shard and layer) since factors cannot be subtracted.  Never forming the
    scatter, it matches ``lstsq`` to about κ × 1e-16 (≤ 1e-8 for κ ≤ 1e6).  Rank
    cutoff: singular values at or below ``max(d, 32) × eps × s_max``, as lstsq.

:meth:`LayerStats.condition` measures κ per layer.  Hidden states of real models
are well conditioned (after init-norm, κ ≤ 184 on every layer of SmolLM2-135M
and ≤ 168 on Gemma-3-270M: bench/bench_audit.py), where ``"gram"`` is accurate to about 1e-12; ``"qr"`` is
for features whose κ nears 1e4 or more.

Precision of float32 features.  They are exact in float64, and both methods
work in float64, so they get the same precision as float64 features.  A float32
Gram would be twice as fast and is accurate to about 1e-7, but a cutoff at
float32's noise floor truncates directions that real hidden states have: on
SmolLM2 it moved PR by up to 1.4e-3 (layers 0, 1, 30) away from the reference's
least squares, and sent most solves of Gemma-3 to the eigendecomposition.

Layers are indexed as in ``hidden_states``: 0 is the embedding output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.errors import StatsError
from audit.internal import linalg
from audit.jackknife import jackknife_se

MEASURES = ("token_id", "shuffled_token_id", "one_hot", "separation")
METHODS = ("gram", "qr")
_CLASS_MEASURES = frozenset(("shuffled_token_id", "one_hot", "separation"))

# A column is dead (constant) when centring removes all but this many units of
# its precision from its shifted sum of squares.
_DEAD_COLUMN_EPS = 1e3
# Every sum is formed and kept in float64, whatever the features' dtype.
_EPS = float(np.finfo(np.float64).eps)
_ROUNDING_MARGIN = 10.0
"""How far above the features' own rounding noise the rank cutoff sits (see
``LayerStats._rcond``)."""


@dataclass(frozen=True)
class StdErr:
    """Jackknife standard errors over shards, one value per layer (NaN when fewer
    than two shards hold examples)."""

    pr: np.ndarray
    """Standard error of the measure's value, float64 [layers]."""
    log10_pr: np.ndarray
    """Standard error of log10 of the value, float64 [layers]."""


@dataclass
class _Moments:
    """Shifted (uncentred) sums over a set of shards, for one layer.

    ``sx`` [d] = Σ(x−a), ``sxx`` [d, d] = Σ(x−a)(x−a)ᵀ; for token_id ``sy``,
    ``syy``, ``sxy`` [d] with y shifted by an integer; for the class measures
    ``nc`` [k] counts and ``sc`` [k, d] = Σ_{y=c}(x−a), classes in sorted order.
    With ``method="qr"`` there is no ``sxx``/``sxy``: ``r`` [p, p] is instead the
    triangular factor of [1 | x−a | (y−c)] (p = d+1, plus 1 with a target column),
    whose trailing block ``r[1:, 1:]`` is the factor of the centred columns.
    """

    n: int
    sx: np.ndarray
    sxx: np.ndarray | None = None
    r: np.ndarray | None = None
    sy: float = 0.0
    syy: float = 0.0
    sxy: np.ndarray | None = None
    distinct: bool = False
    nc: np.ndarray | None = None
    sc: np.ndarray | None = None

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean offset m = Σ(x−a)/n [d], centred scatter S [d, d], and the shifted
        sum of squares diagonal [d] (for the dead-column test)."""
        m = self.sx / self.n
        r = m * np.sqrt(self.n)
        S = self.sxx - np.outer(r, r)  # r_i·r_j keeps S exactly symmetric
        return m, S, np.diag(self.sxx)

    def centred_factor(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For ``method="qr"``: mean offset m [d], the factor F = r[1:, 1:] of the
        centred columns (FᵀF = centred scatter of [x | y]), the centred sums of
        squares of the features [d] and their shifted (raw) ones [d]."""
        d = self.sx.size
        m = self.sx / self.n
        F = self.r[1:, 1:]
        return m, F, _col_sq(F[:, :d]), _col_sq(self.r[:, 1:d + 1])


class LayerStats:
    """Streaming per-layer statistics of (features, next-token target) pairs.

    ``measures``: subset of :data:`MEASURES`; only what they need is kept.
    ``shards``: number of independent parts kept for the jackknife (1 turns
    uncertainty off and costs the least memory).  ``shuffle_seed``: seed of the
    ``shuffled_token_id`` permutation.  ``method``: how the feature scatter is
    accumulated, ``"gram"`` (default: Gram matrices, fast, relative error about
    κ² × 1e-16) or ``"qr"`` (streaming QR factors, about 7× the time, relative
    error about κ × 1e-16); see the module docstring.  Shapes (layers, d) come
    from the first :meth:`update`.
    """

    def __init__(self, measures=("token_id",), shards: int = 10, shuffle_seed: int = 0,
                 method: str = "gram") -> None:
        if isinstance(measures, str):
            measures = (measures,)
        measures = tuple(measures)
        for name in measures:
            _check_measure_name(name)
        if not measures:
            raise StatsError(f"no measures requested; valid measures: {', '.join(MEASURES)}")
        if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
            raise StatsError(f"shards must be a positive integer, got {shards!r}")
        if isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, (int, np.integer)):
            raise StatsError(f"shuffle_seed must be an integer, got {shuffle_seed!r}")
        if method not in METHODS:
            raise StatsError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
        self._measures = tuple(m for m in MEASURES if m in measures)  # canonical order
        self._shards = int(shards)
        self._seed = int(shuffle_seed)
        self._method = str(method)
        self._qr = self._method == "qr"
        self._spectra_cache: tuple[np.ndarray, np.ndarray] | None = None
        self._factor_cache: dict[int, np.ndarray] = {}  # qr: all shards' factor per layer
        self._token = "token_id" in self._measures
        self._classed = bool(_CLASS_MEASURES & set(self._measures))
        self._n = np.zeros(self._shards, dtype=np.int64)
        self._layers: int | None = None
        self._width: int | None = None
        self._input_eps = _EPS
        """Machine epsilon of the coarsest features seen (float32's once any were)."""

    # ----------------------------------------------------------------- properties
    @property
    def measures(self) -> tuple[str, ...]:
        """The measures kept, in the canonical order of :data:`MEASURES`."""
        return self._measures

    @property
    def shards(self) -> int:
        return self._shards

    @property
    def shuffle_seed(self) -> int:
        return self._seed

    @property
    def method(self) -> str:
        """How the feature scatter is accumulated: ``"gram"`` or ``"qr"``."""
        return self._method

    @property
    def count(self) -> int:
        """Number of examples (tokens) seen."""
        return int(self._n.sum())

    @property
    def layers(self) -> int | None:
        """Number of layers (hidden states), or None before the first example."""
        return self._layers

    @property
    def width(self) -> int | None:
        """Feature width d, or None before the first example."""
        return self._width

    @property
    def classes(self) -> np.ndarray:
        """Sorted distinct targets seen, int64 [k] (class-based measures only)."""
        if not self._classed:
            raise StatsError("classes are kept only for the measures "
                             + ", ".join(m for m in MEASURES if m in _CLASS_MEASURES))
        if self._layers is None:
            return np.zeros(0, dtype=np.int64)
        return np.sort(self._ids[: self._k])

    # -------------------------------------------------------------------- storage
    def _allocate(self, layers: int, d: int, shift_x: np.ndarray, shift_y: float) -> None:
        g = self._shards
        self._layers, self._width = layers, d
        self._shift_x = shift_x  # float64 [layers, d]
        self._shift_y = float(shift_y)  # integer-valued
        self._sx = np.zeros((g, layers, d))
        if self._qr:
            # Factor of [1 | x − shift | (y − shift_y)]: ones first, so that the
            # trailing block is the factor of the centred columns.
            p = d + 1 + int(self._token)
            self._r = np.zeros((g, layers, p, p))
        else:
            self._sxx = np.zeros((g, layers, d, d))
        if self._token:
            self._sy = np.zeros(g)
            self._syy = np.zeros(g)
            if not self._qr:
                self._sxy = np.zeros((g, layers, d))
            self._ymin = np.full(g, np.iinfo(np.int64).max, dtype=np.int64)
            self._ymax = np.full(g, np.iinfo(np.int64).min, dtype=np.int64)
        if self._classed:
            # Slots in arrival order (growth is amortised: capacity doubles);
            # results are always computed in sorted class order.
            self._k = 0
            self._ids = np.zeros(0, dtype=np.int64)
            self._nc = np.zeros((g, 0), dtype=np.int64)
            self._sc = np.zeros((g, layers, 0, d))

    def _slots(self, ids: np.ndarray) -> np.ndarray:
        """Storage slots of the sorted distinct ``ids`` [u], creating new ones."""
        known = self._ids[: self._k]
        order = np.argsort(known)
        pos = np.searchsorted(known[order], ids)
        found = pos < self._k
        found[found] = known[order][pos[found]] == ids[found]
        slots = np.full(ids.size, -1, dtype=np.int64)
        slots[found] = order[pos[found]]
        new = ids[~found]
        if new.size:
            need = self._k + new.size
            if need > self._ids.size:
                cap = max(need, 2 * self._ids.size, 16)
                grow = cap - self._ids.size
                self._ids = np.concatenate([self._ids, np.zeros(grow, dtype=np.int64)])
                self._nc = np.concatenate(
                    [self._nc, np.zeros((self._shards, grow), dtype=np.int64)], axis=1)
                self._sc = np.concatenate(
                    [self._sc, np.zeros((self._shards, self._layers, grow, self._width))], axis=2)
            self._ids[self._k: need] = new
            slots[~found] = np.arange(self._k, need)
            self._k = need
        return slots

    # --------------------------------------------------------------------- update
    def update(self, features, targets, shard: int = 0) -> None:
        """Add a batch.

        ``features``: float32 or float64 array [layers, n, d] (hidden states,
        layer 0 = embedding output); ``targets``: integer array [n].  Several
        example axes are accepted too, ``features`` [layers, *batch, d] with
        ``targets`` [*batch] (e.g. [layers, sequences, positions, d]): a strided
        view of hidden states is then read layer by layer without first copying
        the whole batch.  ``shard``:
        which part (0 ≤ shard < shards) the batch joins; keep whole sequences in
        one shard.  Raises :class:`StatsError` on NaN/inf features (naming the
        first bad layer), shapes that differ from earlier batches or from
        ``targets``, a shard out of range, or non-integer targets.  The
        accumulator is unchanged when an error is raised.
        """
        x = np.asarray(features)
        y = np.asarray(targets)
        if x.ndim < 3:
            raise StatsError(f"features must be a 3-d array [layers, n, d], got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise StatsError(f"features must be float32 or float64, got dtype {x.dtype}")
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32 if x.dtype.itemsize <= 4 else np.float64)
        if x.ndim > 3:
            if y.shape != x.shape[1:-1]:
                raise StatsError(f"features of shape {x.shape} need targets of shape "
                                 f"{x.shape[1:-1]}, got {y.shape}")
            y = y.reshape(-1)
        if y.ndim != 1:
            raise StatsError(f"targets must be a 1-d integer array [n], got shape {y.shape}")
        if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
            raise StatsError(f"targets must be integers, got dtype {y.dtype}")
        layers, d = x.shape[0], x.shape[-1]
        n = y.shape[0] if x.ndim > 3 else x.shape[1]
        example_axes = tuple(range(1, x.ndim - 1))
        if self._layers is not None and layers != self._layers:
            raise StatsError(f"features have {layers} layers, but earlier batches had {self._layers}")
        if self._width is not None and d != self._width:
            raise StatsError(f"features have width {d}, but earlier batches had width {self._width}")
        if y.shape[0] != n:
            raise StatsError(f"features have {n} examples per layer, but targets has {y.shape[0]}")
        if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)) \
                or not 0 <= shard < self._shards:
            raise StatsError(f"shard {shard!r} is out of range: this accumulator has "
                             f"{self._shards} shards (0..{self._shards - 1})")
        if n == 0 or layers == 0 or d == 0:
            return
        y = y.astype(np.int64, copy=False)

        # max/min propagate NaN and show ±inf: two cheap passes (about 5 ms per
        # batch of 1024 tokens × 31 × 576) check every value before anything is
        # added, so a rejected batch leaves no trace.
        high = x.max(axis=(*example_axes, -1))
        low = x.min(axis=(*example_axes, -1))
        bad = ~(np.isfinite(high) & np.isfinite(low))
        if bad.any():
            raise StatsError("features contain NaN or infinite values", layer=int(np.argmax(bad)))

        if self._layers is None:
            self._allocate(layers, d, x.mean(axis=example_axes, dtype=np.float64),
                           float(np.rint(y.mean())))
        # Float32 features are exact in float64 and their Grams are formed in
        # float64 too; only the rank cutoff remembers that they were rounded.
        dtype = np.dtype(np.float64)
        self._input_eps = max(self._input_eps, float(np.finfo(x.dtype).eps))
        shift = self._shift_x

        s = int(shard)
        ys = (y - self._shift_y).astype(np.float64)  # exact integers
        if self._classed:
            ids, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
            slots = self._slots(ids)
            order = np.argsort(inv, kind="stable")
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self._nc[s, slots] += counts
        if self._qr:
            # stack = [R | rows of (1, x − shift, y − shift_y)]: its triangular
            # factor is the factor of everything this shard has seen.
            p = self._r.shape[-1]
            stack = np.empty((p + n, p), dtype=dtype)
            stack[p:, 0] = 1.0
            if self._token:
                stack[p:, d + 1] = ys
            xs = stack[p:, 1:d + 1]
        else:
            # buf = [x − shift | y − shift_y | 1] [n, d+2]: one symmetric rank-n
            # update (bufᵀbuf is BLAS syrk) gives Σxxᵀ, Σxy and Σx.
            buf = np.empty((n, d + 2), dtype=dtype)
            buf[:, d] = ys
            buf[:, d + 1] = 1.0
            xs = buf[:, :d]
            gram = np.empty((d + 2, d + 2), dtype=dtype)
        for layer in range(layers):
            np.subtract(x[layer].reshape(n, d), shift[layer], out=xs)  # copies a strided layer
            if self._qr:
                stack[:p] = self._r[s, layer]
                self._r[s, layer] = np.linalg.qr(stack, mode="r")
                self._sx[s, layer] += xs.sum(axis=0)
            else:
                np.matmul(buf.T, buf, out=gram)
                self._sxx[s, layer] += gram[:d, :d]
                self._sx[s, layer] += gram[:d, d + 1]
                if self._token:
                    self._sxy[s, layer] += gram[:d, d]
            if self._classed:
                self._sc[s, layer, slots] += np.add.reduceat(
                    xs[order], starts, axis=0, dtype=np.float64)
        if self._token:
            self._sy[s] += ys.sum()
            self._syy[s] += ys @ ys
            self._ymin[s] = min(self._ymin[s], int(y.min()))
            self._ymax[s] = max(self._ymax[s], int(y.max()))
        self._n[s] += n
        self._spectra_cache = None
        self._factor_cache = {}

    # ---------------------------------------------------------------------- merge
    def merge(self, other: "LayerStats") -> "LayerStats":
        """A new accumulator equal to having seen the inputs of both.

        Both must have the same measures, shards and shuffle_seed, and (when both
        hold examples) the same layers and width; otherwise :class:`StatsError`
        says which differs.
        """
        if not isinstance(other, LayerStats):
            raise StatsError(f"cannot merge LayerStats with {type(other).__name__}")
        for what, a, b in (("measures", self._measures, other._measures),
                           ("shards", self._shards, other._shards),
                           ("shuffle_seed", self._seed, other._seed),
                           ("method", self._method, other._method)):
            if a != b:
                raise StatsError(f"cannot merge accumulators with different {what}: {a!r} vs {b!r}")
        if self._layers is not None and other._layers is not None:
            for what, a, b in (("layers", self._layers, other._layers),
                               ("width", self._width, other._width)):
                if a != b:
                    raise StatsError(
                        f"cannot merge accumulators with different {what}: {a!r} vs {b!r}")
        if other._layers is None:
            return LayerStats.from_arrays(self.to_arrays())
        if self._layers is None:
            return LayerStats.from_arrays(other.to_arrays())

        out = LayerStats.from_arrays(self.to_arrays())
        out._n += other._n
        out._input_eps = max(self._input_eps, other._input_eps)
        # Re-express other's sums around out's shift (δ = b − a, ε = c_b − c_a):
        # Σ(x−a)(x−a)ᵀ = Σ(x−b)(x−b)ᵀ + δ Σ(x−b)ᵀ + Σ(x−b) δᵀ + n δδᵀ.
        nb = other._n.astype(np.float64)[:, None, None]
        delta = (other._shift_x - out._shift_x)[None]  # [1, layers, d]
        eps_y = other._shift_y - out._shift_y  # y − c_a = (y − c_b) + ε
        sx_b = other._sx
        if self._qr:
            # [1 | x−a | y−c_a] = [1 | x−b | y−c_b] T with T = I + e₀[0, δ, ε]: only
            # row 0 of the factor changes (its other rows are 0 in column 0).
            d = self._width
            rb = other._r.copy()
            rb[:, :, 0, 1:d + 1] += rb[:, :, 0, :1] * delta
            if self._token:
                rb[:, :, 0, d + 1] += rb[:, :, 0, 0] * eps_y
            for s, layer in np.ndindex(*rb.shape[:2]):
                if other._n[s]:  # an empty shard's factor is zero
                    out._r[s, layer] = _stack_factor(out._r[s, layer], rb[s, layer])
        else:
            out._sxx += (other._sxx
                         + sx_b[..., :, None] * delta[..., None, :]
                         + delta[..., :, None] * sx_b[..., None, :]
                         + nb[..., None] * delta[..., :, None] * delta[..., None, :])
        out._sx += sx_b + nb * delta
        if self._token:
            ny = other._n.astype(np.float64)
            if not self._qr:
                out._sxy += (other._sxy + eps_y * sx_b + other._sy[:, None, None] * delta
                             + nb * delta * eps_y)
            out._syy += other._syy + 2.0 * eps_y * other._sy + ny * eps_y ** 2
            out._sy += other._sy + ny * eps_y
            out._ymin = np.minimum(out._ymin, other._ymin)
            out._ymax = np.maximum(out._ymax, other._ymax)
        if self._classed and other._k:
            ids = other._ids[: other._k]
            order = np.argsort(ids)
            slots = out._slots(ids[order])
            nc_b = other._nc[:, : other._k][:, order]  # [g, u]
            sc_b = other._sc[:, :, : other._k][:, :, order]  # [g, layers, u, d]
            out._nc[:, slots] += nc_b
            out._sc[:, :, slots] += sc_b + nc_b[:, None, :, None] * delta[:, :, None, :]
        return out

    def __add__(self, other: "LayerStats") -> "LayerStats":
        if not isinstance(other, LayerStats):
            return NotImplemented
        return self.merge(other)

    # -------------------------------------------------------------------- results
    def _require(self, measure: str) -> None:
        _check_measure_name(measure)
        if measure not in self._measures:
            raise StatsError(f"measure {measure!r} was not requested; this accumulator keeps "
                             f"{', '.join(self._measures)}")
        if self.count == 0:
            raise StatsError("no examples: call update() before asking for results")

    def _rcond(self) -> float:
        """The relative rank cutoff: on eigenvalues of the scaled scatter (``gram``),
        on singular values of the scaled factor (``qr``).

        For float64 features it is float64's own floor, max(d, 32) × eps, which is
        lstsq's answer.  Float32 features carry rounding noise of relative size
        about eps32 = 1.2e-7 in every direction, and a direction that is exactly
        empty in exact arithmetic (the mean direction after a LayerNorm, which
        centres every token) keeps that noise: its eigenvalue, about 5e-15 of the
        largest on a tiny GPT-2 (d = 32), sits right at float64's cutoff 7e-15, so
        whether it counts as rank flips with the rounding of the framework that ran
        the norm, and PR moves by 1e-4 relative (measured: PyTorch against
        onnxruntime on the same model).  For float32 features the cutoff is
        therefore ``_ROUNDING_MARGIN`` × max(d, 32) × eps32² on eigenvalues (4.5e-12
        at d = 32; the square root on singular values), far above that noise and
        far below any real layer's spread (κ about 200 on SmolLM2 and Gemma-3:
        eigenvalue ratios about 3e-5)."""
        d = max(self._width, 32)
        if self._qr:
            return max(d * _EPS, np.sqrt(_ROUNDING_MARGIN * d) * self._input_eps)
        return max(d * _EPS, _ROUNDING_MARGIN * d * self._input_eps ** 2)

    def _sorted_classes(self) -> tuple[np.ndarray, np.ndarray]:
        ids = self._ids[: self._k]
        order = np.argsort(ids)
        return ids[order], order

    def _prepare(self, measure: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Check ``measure`` can be computed; return the sorted-class order of the
        storage slots and, for ``shuffled_token_id``, the mapped id of each sorted
        class (float64 [k])."""
        self._require(measure)
        if not self._classed:
            return None, None
        sorted_ids, order = self._sorted_classes()
        if sorted_ids.size < 2:
            raise StatsError(_ONE_TARGET)
        mapping = None
        if measure == "shuffled_token_id":
            perm = np.random.default_rng(self._seed).permutation(sorted_ids.size)
            mapping = sorted_ids[perm].astype(np.float64)
        return order, mapping

    def residuals(self, measure: str) -> np.ndarray:
        """The measure per layer, float64 [layers] (PR for the regressions, D for
        ``separation``).  Raises :class:`StatsError` for a measure not requested,
        an empty accumulator or a single distinct target."""
        order, mapping = self._prepare(measure)
        out = np.empty(self._layers)
        for layer in range(self._layers):
            out[layer] = _value(measure, self._moments_total(layer, order), self._rcond(),
                                _EPS, mapping)
            if np.isnan(out[layer]):
                raise StatsError(_ONE_TARGET)
        return out

    @property
    def filled_shards(self) -> tuple[int, ...]:
        """Ids of the shards holding examples, in order: the rows of
        :meth:`leave_one_out` (empty when fewer than two shards hold examples)."""
        parts = np.flatnonzero(self._n)
        return tuple(int(p) for p in parts) if parts.size >= 2 else ()

    def leave_one_out(self, measure: str) -> np.ndarray:
        """The measure with each non-empty shard left out, float64 [g, layers]
        (g = number of shards holding examples; g = 0 when fewer than two do).
        Each value comes from the total minus one shard's sums, not a refit.  A
        left-out subset with a single distinct target gives NaN."""
        order, mapping = self._prepare(measure)
        parts = np.flatnonzero(self._n)
        if parts.size < 2:
            return np.zeros((0, self._layers))
        out = np.empty((parts.size, self._layers))
        for layer in range(self._layers):
            for j, mom in enumerate(self._moments_left_out(layer, order, parts)):
                out[j, layer] = _value(measure, mom, self._rcond(), _EPS, mapping)
        return out

    def stderr(self, measure: str) -> StdErr:
        """Jackknife standard errors over the g non-empty shards:
        se = sqrt((g−1)/g · Σ_i (θ_(i) − mean θ)²), for the value and its log10.
        NaN when fewer than two shards hold examples."""
        loo = self.leave_one_out(measure)
        if loo.shape[0] < 2:
            nan = np.full(self._layers, np.nan)
            return StdErr(pr=nan, log10_pr=nan.copy())
        return StdErr(pr=jackknife_se(loo), log10_pr=jackknife_se(_log10(loo)))

    def _moments_total(self, layer: int, order: np.ndarray | None,
                       factor: bool = True) -> _Moments:
        """Moments of all shards (``factor=False``: without the QR factor, which
        costs a factorisation)."""
        full = self._n > 0
        m = _Moments(n=self.count, sx=self._sx[:, layer].sum(axis=0))
        if not self._qr:
            m.sxx = self._sxx[:, layer].sum(axis=0)
        elif factor:
            if layer not in self._factor_cache:  # residuals, rank and condition share it
                self._factor_cache[layer] = _stack_factor(*self._r[full, layer])
            m.r = self._factor_cache[layer]
        if self._token:
            m.sy, m.syy = self._sy.sum(), self._syy.sum()
            if not self._qr:
                m.sxy = self._sxy[:, layer].sum(axis=0)
            m.distinct = bool(self._ymin[full].min() < self._ymax[full].max())
        if self._classed:
            m.nc = self._nc[:, order].sum(axis=0)
            m.sc = self._sc[:, layer][:, order].sum(axis=0)
        return m

    def _moments_left_out(self, layer: int, order: np.ndarray | None,
                          parts: np.ndarray) -> list[_Moments]:
        """Moments with each shard in ``parts`` left out: total minus that shard's
        sums.  Factors cannot be subtracted: with ``method="qr"`` the factor of all
        shards but one comes from the factors of the shards before and after it
        (prefix and suffix products, 3 × len(parts) small factorisations)."""
        total = self._moments_total(layer, order, factor=False)
        factors = _leave_one_out_factors([self._r[i, layer] for i in parts]) if self._qr else None
        out = []
        for j, i in enumerate(parts):
            keep = (self._n > 0) & (np.arange(self._shards) != i)
            m = _Moments(n=total.n - int(self._n[i]), sx=total.sx - self._sx[i, layer])
            if self._qr:
                m.r = factors[j]
            else:
                m.sxx = total.sxx - self._sxx[i, layer]
            if self._token:
                m.sy, m.syy = total.sy - self._sy[i], total.syy - self._syy[i]
                if not self._qr:
                    m.sxy = total.sxy - self._sxy[i, layer]
                m.distinct = bool(self._ymin[keep].min() < self._ymax[keep].max())
            if self._classed:
                m.nc = total.nc - self._nc[i, order]
                m.sc = total.sc - self._sc[i, layer][order]
            out.append(m)
        return out

    def rank(self) -> np.ndarray:
        """Numerical rank of the centred features per layer, int64 [layers]:
        constant columns count as lost rank; of the others, scaled to unit norm,
        the singular values s above the cutoff count (``"gram"``: s² above
        ``max(d, 32) × eps × s_max²``, the scatter's own noise floor; ``"qr"``:
        s above ``max(d, 32) × eps × s_max``, as lstsq; for float32 features both
        cutoffs sit above float32's rounding noise instead, see ``_rcond``)."""
        return self._spectra()[0]

    def condition(self) -> np.ndarray:
        """Condition number κ of the centred features per layer, each non-constant
        column scaled to unit norm, float64 [layers]: s_max / s_min, ``inf`` when
        the features are rank-deficient (:meth:`rank`).  It bounds the precision:
        about κ² × 1e-16 relative for ``method="gram"``, κ × 1e-16 for ``"qr"``.
        With ``"gram"``, κ above about 1e7 cannot be told from rank deficiency."""
        return self._spectra()[1]

    def _spectra(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count == 0:
            raise StatsError("no examples: call update() before asking for results")
        if self._spectra_cache is None:
            ranks = np.empty(self._layers, dtype=np.int64)
            conds = np.empty(self._layers)
            for layer in range(self._layers):
                mom = self._moments_total(layer, None)
                if self._qr:
                    _, F, diag, raw = mom.centred_factor()
                    d = self._width
                    sv = linalg.factor_singular_values(F[:d, :d], _live(diag, raw, _EPS))
                    cut = self._rcond()
                else:
                    _, S, raw = mom.centred()
                    sv = linalg.scatter_singular_values(S, _live(np.diag(S), raw, _EPS))
                    cut = np.sqrt(self._rcond())
                kept = sv > cut * sv[0] if sv.size else sv.astype(bool)
                ranks[layer] = np.count_nonzero(kept)
                full = ranks[layer] == self._width  # no dead column, no lost rank
                conds[layer] = sv[0] / sv[-1] if full else np.inf
            self._spectra_cache = (ranks, conds)
        return self._spectra_cache[0].copy(), self._spectra_cache[1].copy()

    # -------------------------------------------------------------- serialisation
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The whole state as plain numpy arrays (no object arrays), so
        ``np.savez`` / ``np.load(allow_pickle=False)`` round-trip it exactly.
        Classes are written in sorted order."""
        d = {
            "measures": np.array(self._measures, dtype="<U32"),
            "shards": np.array(self._shards, dtype=np.int64),
            "shuffle_seed": np.array(self._seed, dtype=np.int64),
            "method": np.array(self._method, dtype="<U8"),
            "input_eps": np.array(self._input_eps),
            "n": self._n.copy(),
        }
        if self._layers is None:
            return d
        d.update(shift_x=self._shift_x.copy(), shift_y=np.array(self._shift_y),
                 sx=self._sx.copy())
        if self._qr:
            d.update(r=self._r.copy())
        else:
            d.update(sxx=self._sxx.copy())
        if self._token:
            d.update(sy=self._sy.copy(), syy=self._syy.copy(),
                     ymin=self._ymin.copy(), ymax=self._ymax.copy())
            if not self._qr:
                d.update(sxy=self._sxy.copy())
        if self._classed:
            ids, order = self._sorted_classes()
            d.update(classes=ids, class_counts=self._nc[:, order],
                     class_sums=self._sc[:, :, order])
        return d

    @classmethod
    def from_arrays(cls, arrays) -> "LayerStats":
        """Rebuild an accumulator from :meth:`to_arrays` output (a dict or an
        ``np.load`` result)."""
        try:
            a = {k: np.asarray(arrays[k]) for k in arrays}
            method = str(a["method"]) if "method" in a else "gram"  # older arrays: gram
            out = cls(measures=tuple(str(m) for m in a["measures"]),
                      shards=int(a["shards"]), shuffle_seed=int(a["shuffle_seed"]),
                      method=method)
            out._n = a["n"].astype(np.int64).copy()
            if "input_eps" in a:  # older arrays: float64's
                out._input_eps = float(a["input_eps"])
            if "sx" not in a:
                return out
            g, layers, d = a["sx"].shape
            out._allocate(layers, d, a["shift_x"].astype(np.float64).copy(), float(a["shift_y"]))
            out._sx[...] = a["sx"]
            if out._qr:
                out._r[...] = a["r"]
            else:
                out._sxx[...] = a["sxx"]
            if out._token:
                out._sy[...] = a["sy"]
                out._syy[...] = a["syy"]
                if not out._qr:
                    out._sxy[...] = a["sxy"]
                out._ymin[...] = a["ymin"]
                out._ymax[...] = a["ymax"]
            if out._classed:
                out._ids = a["classes"].astype(np.int64).copy()
                out._k = out._ids.size
                out._nc = a["class_counts"].astype(np.int64).copy()
                out._sc = a["class_sums"].astype(np.float64).copy()
        except KeyError as exc:
            raise StatsError(f"statistics arrays lack the key {exc.args[0]!r}") from None
        except ValueError as exc:
            raise StatsError(f"statistics arrays are inconsistent: {exc}") from None
        return out

    def __repr__(self) -> str:
        return (f"LayerStats(measures={self._measures!r}, shards={self._shards}, "
                f"method={self._method!r}, count={self.count}, layers={self._layers}, width={self._width})")


_ONE_TARGET = ("only one distinct target value: the target's total sum of squares "
               "(SS_tot) is zero, so PR is undefined")


def _check_measure_name(name) -> None:
    if name not in MEASURES:
        raise StatsError(f"unknown measure {name!r}; valid measures: {', '.join(MEASURES)}")


def _live(diag: np.ndarray, raw_diag: np.ndarray, eps: float) -> np.ndarray:
    """Columns that are not constant: centring leaves more than rounding noise of
    their shifted sums of squares ``raw_diag`` in their centred ones ``diag``."""
    return diag > _DEAD_COLUMN_EPS * eps * raw_diag


def _col_sq(A: np.ndarray) -> np.ndarray:
    """Squared Euclidean norm of each column of ``A``."""
    return np.einsum("ij,ij->j", A, A)


def _stack_factor(*factors: np.ndarray) -> np.ndarray:
    """Triangular factor R [p, p] of the rows of ``factors`` stacked (RᵀR = Σ FᵢᵀFᵢ):
    how QR factors of disjoint sets of examples combine.  A single factor comes
    back as it is (not copied: results never write into factors)."""
    if len(factors) == 1:
        return factors[0]
    return np.linalg.qr(np.concatenate(factors), mode="r")


def _leave_one_out_factors(factors: list[np.ndarray]) -> list[np.ndarray]:
    """For each i, the factor of all ``factors`` but the i-th, from prefix and
    suffix combinations (no downdating, which would lose precision)."""
    g = len(factors)
    prefix: list[np.ndarray | None] = [None] * g  # prefix[i]: factors[:i]
    suffix: list[np.ndarray | None] = [None] * g  # suffix[i]: factors[i+1:]
    for i in range(1, g):
        prefix[i] = factors[0] if i == 1 else _stack_factor(prefix[i - 1], factors[i - 1])
    for i in range(g - 2, -1, -1):
        suffix[i] = factors[-1] if i == g - 2 else _stack_factor(factors[i + 1], suffix[i + 1])
    return [_stack_factor(*(f for f in (prefix[i], suffix[i]) if f is not None))
            for i in range(g)]


def _value(measure: str, mom: _Moments, rcond: float, eps: float,
           mapping: np.ndarray | None) -> float:
    """One layer's measure from its moments; NaN when undefined (fewer than two
    examples or a single distinct target)."""
    n = mom.n
    if n < 2:
        return float("nan")
    if mom.r is not None:
        return _value_qr(measure, mom, rcond, eps, mapping)
    m, S, raw = mom.centred()
    live = _live(np.diag(S), raw, eps)
    if measure == "token_id":
        if not mom.distinct:
            return float("nan")
        ybar = mom.sy / n
        sst = mom.syy - mom.sy * ybar
        sxy = mom.sxy - mom.sx * ybar
        return linalg.residual_fraction(S, sxy[:, None], sst, live, rcond)
    V, targets = _class_targets(measure, mom, m, mapping)
    if V is None:
        return float("nan")
    if measure == "separation":
        # D = tr(SS_w SS_b⁺) = tr(W B⁺) (the 1/n factors cancel); V is weighted here
        B = V.T @ V  # Σ_c n_c (μ_c − μ)(μ_c − μ)ᵀ
        return linalg.trace_pinv(S - B, B, live, rcond)
    B, sst = targets
    return linalg.residual_fraction(S, B, sst, live, rcond)


def _value_qr(measure: str, mom: _Moments, rcond: float, eps: float,
              mapping: np.ndarray | None) -> float:
    """:func:`_value` from a QR factor: the same quantities, computed without
    forming the scatter (whose condition number is κ²)."""
    m, F, diag, raw = mom.centred_factor()
    d = m.size
    live = _live(diag, raw, eps)
    cols = np.flatnonzero(live)
    if measure == "token_id":
        if not mom.distinct:
            return float("nan")
        if cols.size < d:  # factor of the live columns and the target only
            F = np.linalg.qr(F[:, np.append(cols, d)], mode="r")
        return linalg.residual_fraction_qr(F, rcond)
    V, targets = _class_targets(measure, mom, m, mapping)
    if V is None:
        return float("nan")
    Fx = F[:d, :d]
    if measure == "separation":
        return linalg.trace_pinv_factor(Fx, V, live, rcond)
    if not cols.size:
        return 1.0
    if cols.size < d:
        Fx = np.linalg.qr(Fx[:, cols], mode="r")
    B, sst = targets
    return linalg.residual_fraction_factor(Fx, B[cols], sst, rcond)


def _class_targets(measure: str, mom: _Moments, m: np.ndarray, mapping: np.ndarray | None):
    """For the class-based measures: V = Σ_{y=c}(x − μ) [k, d] over the classes
    present, and (for the regressions) the centred cross-products B [d, outputs]
    with the targets' total sum of squares.  For ``separation`` V comes
    class-size weighted, V_c / √n_c = √n_c (μ_c − μ), so that VᵀV = n·SS_b.
    (None, None) when fewer than two classes are present."""
    n = mom.n
    nc, sc = mom.nc, mom.sc
    present = nc > 0
    if np.count_nonzero(present) < 2:
        return None, None
    nc, sc = nc[present], sc[present]
    V = sc - nc[:, None] * m[None, :]  # Σ_{y=c}(x − μ) [k, d]
    if measure == "shuffled_token_id":
        values = mapping[present]
        t = values - (nc @ values) / n  # centred mapped targets [k]
        return V, ((V.T @ t)[:, None], float(nc @ (t * t)))
    if measure == "one_hot":
        return V, (V.T, (n * n - float(nc @ nc)) / n)  # integer arithmetic until the division
    return V / np.sqrt(nc)[:, None], None


def _log10(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)
