"""The additive sums behind :class:`audit.stats.LayerStats`, one class per method.

An accumulator keeps, per shard and layer, the sufficient statistics of the
examples it has seen, in float64 and around fixed shifts (the first batch's
feature mean per layer, the rounded mean target), so that large means cost no
precision:

* shared by every method (:class:`Accumulator`): counts ``n`` [g], ``sx``
  [g, layers, d] = Σ(x−a); for token_id ``sy``, ``syy`` [g] and the target's
  range per shard; for the class-based measures, per class slot (in arrival
  order, capacity doubling) counts ``nc`` [g, k] and sums ``sc``
  [g, layers, k, d] = Σ_{y=c}(x−a);
* the feature scatter, in the form of the method: :class:`GramAccumulator`
  (``"gram"``: Gram matrices ``sxx`` [g, layers, d, d] and ``sxy`` [g, layers, d])
  or :class:`QRAccumulator` (``"qr"``: triangular factors ``r`` [g, layers, p, p]
  of [1 | x−a | y−c]).

The interface, all a :class:`~audit.stats.LayerStats` uses: :meth:`~Accumulator.add`
(a block of examples), :meth:`~Accumulator.rebased` (the same sums around other
shifts), :meth:`~Accumulator.merge`, :meth:`~Accumulator.total` and
:meth:`~Accumulator.left_out` (the :class:`~audit.measures.Moments` of all shards,
or of all but one), :meth:`~Accumulator.rcond`, :meth:`~Accumulator.value` and
:meth:`~Accumulator.spectrum` (the method's :attr:`~Accumulator.formulas` from
:mod:`audit.measures`), :meth:`~Accumulator.to_arrays`
and :meth:`~Accumulator.from_arrays`.  Inputs are checked by the caller.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from audit import measures
from audit.measures import Moments

_ARRAY_ORDER = ("shift_x", "shift_y", "sx", "r", "sxx", "sy", "syy", "ymin", "ymax", "sxy",
                "classes", "class_counts", "class_sums")
"""Keys of :meth:`Accumulator.to_arrays`, in the order files have always had."""


class Accumulator(ABC):
    """Sums of examples per shard and layer around the shifts ``shift_x``
    float64 [layers, d] and ``shift_y`` (an integer-valued float); ``target``:
    keep the target's sums (token_id), ``classed``: keep per-class sums.  A
    subclass keeps the feature scatter in the form of its :attr:`method`, in the
    arrays named by :attr:`scatter_keys`."""

    method: ClassVar[str]
    formulas: ClassVar[measures.Formulas]
    """The measures' formulas for the method's form of the moments."""

    def __init__(self, shards: int, layers: int, width: int, shift_x: np.ndarray,
                 shift_y: float, target: bool, classed: bool) -> None:
        g = shards
        self.shards, self.layers, self.width = shards, layers, width
        self.shift_x = shift_x
        self.shift_y = float(shift_y)
        self.target, self.classed = target, classed
        self.n = np.zeros(g, dtype=np.int64)
        self.sx = np.zeros((g, layers, width))
        self._allocate()
        if target:
            self.sy = np.zeros(g)
            self.syy = np.zeros(g)
            self.ymin = np.full(g, np.iinfo(np.int64).max, dtype=np.int64)
            self.ymax = np.full(g, np.iinfo(np.int64).min, dtype=np.int64)
        if classed:
            # Slots in arrival order (growth is amortised: capacity doubles);
            # results are always computed in sorted class order.
            self.k = 0
            self.ids = np.zeros(0, dtype=np.int64)
            self.nc = np.zeros((g, 0), dtype=np.int64)
            self.sc = np.zeros((g, layers, 0, width))

    # ------------------------------------------------------ the method's part
    @property
    @abstractmethod
    def scatter_keys(self) -> tuple[str, ...]:
        """Names of the scatter's arrays (attributes and keys of :meth:`to_arrays`)."""

    @abstractmethod
    def _allocate(self) -> None:
        """Create the zero scatter arrays."""

    @abstractmethod
    def _block(self, ys: np.ndarray):
        """For a block with shifted targets ``ys`` float64 [n]: a buffer ``xs``
        [n, d] to write each layer's shifted features into, and a function
        ``add_layer(shard, layer)`` that adds them (to the scatter and ``sx``)."""

    @abstractmethod
    def _rebase_scatter(self, out: "Accumulator", delta: np.ndarray, eps_y: float) -> None:
        """Set ``out``'s scatter to this one's re-expressed around shifts moved by
        −``delta`` [1, layers, d] and −``eps_y``."""

    @abstractmethod
    def _merge_scatter(self, other: "Accumulator") -> None:
        """Add the scatter of ``other`` (same shifts)."""

    @abstractmethod
    def _total_scatter(self, mom: Moments, layer: int) -> None:
        """Set the scatter of ``mom`` to that of all shards."""

    @abstractmethod
    def _left_out_scatter(self, moms: list[Moments], layer: int, parts: np.ndarray) -> None:
        """Set the scatter of ``moms[j]`` to that of all shards but ``parts[j]``."""

    def rcond(self, input_eps: float) -> float:
        """The relative rank cutoff of the method's solves (:mod:`audit.measures`),
        for features whose coarsest machine epsilon is ``input_eps``."""
        return self.formulas.rcond(self.width, input_eps)

    def value(self, measure: str, mom: Moments, rcond: float, mapping: np.ndarray | None) -> float:
        """``measure`` from ``mom`` (NaN when undefined), by the method's formulas;
        ``rcond`` from :meth:`rcond`, ``mapping`` from
        :func:`~audit.measures.shuffled_ids` (``shuffled_token_id`` only)."""
        return self.formulas.value(measure, mom, rcond, mapping)

    def spectrum(self, layer: int, input_eps: float) -> tuple[np.ndarray, float]:
        """Singular values of the centred, column-scaled features of ``layer``
        (descending) and the relative cutoff above which they count as rank."""
        return self.formulas.spectrum(self.total(layer, None), self.rcond(input_eps))

    # ------------------------------------------------------------------- add
    def add(self, shard: int, x: np.ndarray, y: np.ndarray) -> None:
        """Add a block of examples to ``shard``: features ``x`` float32 or float64
        [layers, *batch, d] (finite; a strided view is read layer by layer) and
        targets ``y`` int64 [n], n = the number of examples in the batch axes."""
        n, d, s = y.shape[0], self.width, shard
        ys = (y - self.shift_y).astype(np.float64)  # exact integers
        if self.classed:
            ids, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
            slots = self._slots(ids)
            order = np.argsort(inv, kind="stable")
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self.nc[s, slots] += counts
        xs, add_layer = self._block(ys)
        for layer in range(self.layers):
            np.subtract(x[layer].reshape(n, d), self.shift_x[layer], out=xs)  # copies a strided layer
            add_layer(s, layer)
            if self.classed:
                self.sc[s, layer, slots] += np.add.reduceat(
                    xs[order], starts, axis=0, dtype=np.float64)
        if self.target:
            self.sy[s] += ys.sum()
            self.syy[s] += ys @ ys
            self.ymin[s] = min(self.ymin[s], int(y.min()))
            self.ymax[s] = max(self.ymax[s], int(y.max()))
        self.n[s] += n

    def _slots(self, ids: np.ndarray) -> np.ndarray:
        """Storage slots of the sorted distinct ``ids`` [u], creating new ones."""
        known = self.ids[: self.k]
        order = np.argsort(known)
        pos = np.searchsorted(known[order], ids)
        found = pos < self.k
        found[found] = known[order][pos[found]] == ids[found]
        slots = np.full(ids.size, -1, dtype=np.int64)
        slots[found] = order[pos[found]]
        new = ids[~found]
        if new.size:
            need = self.k + new.size
            if need > self.ids.size:
                cap = max(need, 2 * self.ids.size, 16)
                grow = cap - self.ids.size
                self.ids = np.concatenate([self.ids, np.zeros(grow, dtype=np.int64)])
                self.nc = np.concatenate(
                    [self.nc, np.zeros((self.shards, grow), dtype=np.int64)], axis=1)
                self.sc = np.concatenate(
                    [self.sc, np.zeros((self.shards, self.layers, grow, self.width))], axis=2)
            self.ids[self.k: need] = new
            slots[~found] = np.arange(self.k, need)
            self.k = need
        return slots

    def sorted_classes(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct targets seen, sorted, int64 [k], and their storage slots."""
        ids = self.ids[: self.k]
        order = np.argsort(ids)
        return ids[order], order

    # ----------------------------------------------------------------- merge
    def rebased(self, shift_x: np.ndarray, shift_y: float) -> "Accumulator":
        """A new accumulator of the same examples with its sums around ``shift_x``
        and ``shift_y`` (δ = b − a, ε = c_b − c_a from the new shifts a, c_a to
        these b, c_b): Σ(x−a) = Σ(x−b) + n δ, and the method's scatter likewise
        (exact in exact arithmetic)."""
        delta = (self.shift_x - shift_x)[None]  # [1, layers, d]
        eps_y = self.shift_y - shift_y  # y − c_a = (y − c_b) + ε
        out = type(self)(self.shards, self.layers, self.width, shift_x, shift_y,
                         self.target, self.classed)
        out.n = self.n.copy()
        out.sx = self.sx + self.n.astype(np.float64)[:, None, None] * delta
        self._rebase_scatter(out, delta, eps_y)
        if self.target:
            ny = self.n.astype(np.float64)
            out.syy = self.syy + 2.0 * eps_y * self.sy + ny * eps_y ** 2
            out.sy = self.sy + ny * eps_y
            out.ymin, out.ymax = self.ymin.copy(), self.ymax.copy()
        if self.classed:
            out.k, out.ids = self.k, self.ids[: self.k].copy()
            out.nc = self.nc[:, : self.k].copy()
            out.sc = self.sc[:, :, : self.k] + out.nc[:, None, :, None] * delta[:, :, None, :]
        return out

    def merge(self, other: "Accumulator") -> None:
        """Add the examples of ``other`` (same method, shards, layers and width),
        its sums :meth:`rebased` around this accumulator's shifts."""
        b = other.rebased(self.shift_x, self.shift_y)
        self.n += b.n
        self._merge_scatter(b)
        self.sx += b.sx
        if self.target:
            self.syy += b.syy
            self.sy += b.sy
            self.ymin = np.minimum(self.ymin, b.ymin)
            self.ymax = np.maximum(self.ymax, b.ymax)
        if self.classed and b.k:
            ids, order = b.sorted_classes()
            slots = self._slots(ids)
            self.nc[:, slots] += b.nc[:, order]  # [g, u]
            self.sc[:, :, slots] += b.sc[:, :, order]  # [g, layers, u, d]

    # --------------------------------------------------------------- moments
    def _shared_total(self, layer: int, order: np.ndarray | None) -> Moments:
        """Moments of all shards without the scatter; class sums in the sorted
        order of slots ``order`` (none when it is None)."""
        full = self.n > 0
        mom = Moments(n=int(self.n.sum()), sx=self.sx[:, layer].sum(axis=0))
        if self.target:
            mom.sy, mom.syy = self.sy.sum(), self.syy.sum()
            mom.distinct = bool(self.ymin[full].min() < self.ymax[full].max())
        if self.classed and order is not None:
            mom.nc = self.nc[:, order].sum(axis=0)
            mom.sc = self.sc[:, layer][:, order].sum(axis=0)
        return mom

    def total(self, layer: int, order: np.ndarray | None) -> Moments:
        """Moments of ``layer`` over all shards, class sums in the sorted order of
        slots ``order`` (from :meth:`sorted_classes`; None: no class sums)."""
        mom = self._shared_total(layer, order)
        self._total_scatter(mom, layer)
        return mom

    def left_out(self, layer: int, order: np.ndarray | None,
                 parts: np.ndarray) -> list[Moments]:
        """Moments of ``layer`` with each shard in ``parts`` left out: the total
        minus that shard's sums (the method's scatter as it allows)."""
        total = self._shared_total(layer, order)
        out = []
        for i in parts:
            keep = (self.n > 0) & (np.arange(self.shards) != i)
            mom = Moments(n=total.n - int(self.n[i]), sx=total.sx - self.sx[i, layer])
            if self.target:
                mom.sy, mom.syy = total.sy - self.sy[i], total.syy - self.syy[i]
                mom.distinct = bool(self.ymin[keep].min() < self.ymax[keep].max())
            if total.nc is not None:
                mom.nc = total.nc - self.nc[i, order]
                mom.sc = total.sc - self.sc[i, layer][order]
            out.append(mom)
        self._left_out_scatter(out, layer, parts)
        return out

    # --------------------------------------------------------- serialisation
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The sums as plain numpy arrays (copies), classes in sorted order;
        :meth:`from_arrays` reads them back."""
        d = {"shift_x": self.shift_x.copy(), "shift_y": np.array(self.shift_y),
             "sx": self.sx.copy()}
        d.update((key, getattr(self, key).copy()) for key in self.scatter_keys)
        if self.target:
            d.update(sy=self.sy.copy(), syy=self.syy.copy(),
                     ymin=self.ymin.copy(), ymax=self.ymax.copy())
        if self.classed:
            ids, order = self.sorted_classes()
            d.update(classes=ids, class_counts=self.nc[:, order],
                     class_sums=self.sc[:, :, order])
        return {key: d[key] for key in _ARRAY_ORDER if key in d}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], shards: int, target: bool,
                    classed: bool) -> "Accumulator":
        """Rebuild from :meth:`to_arrays` output plus the counts ``a["n"]``.
        Raises KeyError for a missing key, ValueError for a shape that does not
        fit."""
        _, layers, d = a["sx"].shape
        out = cls(shards, layers, d, a["shift_x"].astype(np.float64).copy(),
                  float(a["shift_y"]), target, classed)
        out.n = a["n"].astype(np.int64).copy()
        out.sx[...] = a["sx"]
        for key in out.scatter_keys:
            getattr(out, key)[...] = a[key]
        if target:
            out.sy[...] = a["sy"]
            out.syy[...] = a["syy"]
            out.ymin[...] = a["ymin"]
            out.ymax[...] = a["ymax"]
        if classed:
            out.ids = a["classes"].astype(np.int64).copy()
            out.k = out.ids.size
            out.nc = a["class_counts"].astype(np.int64).copy()
            out.sc = a["class_sums"].astype(np.float64).copy()
        return out


class GramAccumulator(Accumulator):
    """``method="gram"``: Gram matrices Σ(x−a)(x−a)ᵀ [g, layers, d, d] (and
    Σ(x−a)(y−c) [g, layers, d] for token_id), one symmetric rank-n update per
    batch and layer (BLAS dsyrk: d² multiply-adds per token and layer, the cost
    that matters).  Sums subtract, so a left-out shard is the total minus its
    sums.  Solves scale columns to unit variance and use a Cholesky
    factorisation, falling back to the minimum-norm least-squares solution
    (eigendecomposition, relative eigenvalue cutoff
    :func:`~audit.measures.scatter_rcond`) when the scatter is singular; a Gram
    matrix squares the condition number κ, so PR matches lstsq to about
    κ² × 1e-16."""

    method = "gram"
    formulas = measures.SCATTER

    @property
    def scatter_keys(self) -> tuple[str, ...]:
        return ("sxx", "sxy") if self.target else ("sxx",)

    def _allocate(self) -> None:
        g, layers, d = self.shards, self.layers, self.width
        self.sxx = np.zeros((g, layers, d, d))
        if self.target:
            self.sxy = np.zeros((g, layers, d))

    def _block(self, ys: np.ndarray):
        # buf = [x − shift | y − shift_y | 1] [n, d+2]: one symmetric rank-n
        # update (bufᵀbuf is BLAS syrk) gives Σxxᵀ, Σxy and Σx.
        n, d = ys.size, self.width
        buf = np.empty((n, d + 2))
        buf[:, d] = ys
        buf[:, d + 1] = 1.0
        gram = np.empty((d + 2, d + 2))

        def add_layer(s: int, layer: int) -> None:
            np.matmul(buf.T, buf, out=gram)
            self.sxx[s, layer] += gram[:d, :d]
            self.sx[s, layer] += gram[:d, d + 1]
            if self.target:
                self.sxy[s, layer] += gram[:d, d]

        return buf[:, :d], add_layer

    def _rebase_scatter(self, out: Accumulator, delta: np.ndarray, eps_y: float) -> None:
        # Σ(x−a)(x−a)ᵀ = Σ(x−b)(x−b)ᵀ + δ Σ(x−b)ᵀ + Σ(x−b) δᵀ + n δδᵀ.
        nb = self.n.astype(np.float64)[:, None, None]
        sx_b = self.sx
        out.sxx = (self.sxx
                   + sx_b[..., :, None] * delta[..., None, :]
                   + delta[..., :, None] * sx_b[..., None, :]
                   + nb[..., None] * delta[..., :, None] * delta[..., None, :])
        if self.target:
            out.sxy = (self.sxy + eps_y * sx_b + self.sy[:, None, None] * delta
                       + nb * delta * eps_y)

    def _merge_scatter(self, other: Accumulator) -> None:
        self.sxx += other.sxx
        if self.target:
            self.sxy += other.sxy

    def _sums(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Σ over shards of ``sxx`` [d, d] and ``sxy`` [d] (None without a target)."""
        return (self.sxx[:, layer].sum(axis=0),
                self.sxy[:, layer].sum(axis=0) if self.target else None)

    def _total_scatter(self, mom: Moments, layer: int) -> None:
        mom.sxx, mom.sxy = self._sums(layer)

    def _left_out_scatter(self, moms: list[Moments], layer: int, parts: np.ndarray) -> None:
        sxx, sxy = self._sums(layer)
        for mom, i in zip(moms, parts):
            mom.sxx = sxx - self.sxx[i, layer]
            if self.target:
                mom.sxy = sxy - self.sxy[i, layer]


class QRAccumulator(Accumulator):
    """``method="qr"``: triangular QR factors ``r`` [g, layers, p, p] of
    [1 | x−a | y−c] (p = d+1, plus 1 with token_id's target column; ones first,
    so that the trailing block is the factor of the centred columns), updated per
    batch by a Householder QR of the factor stacked on the batch (about 2.75× the
    flops of the Gram update at a third of its speed: about 7× its time,
    bench/bench_engine.py), combined across shards and accumulators by stacking
    factors.  Factors cannot be subtracted: leave-one-out factors come from
    prefix and suffix combinations (3 small factorisations per shard and layer).
    Never forming the scatter, PR matches lstsq to about κ × 1e-16; rank cutoff
    :func:`~audit.measures.factor_rcond` on singular values, as lstsq's."""

    method = "qr"
    formulas = measures.FACTOR
    scatter_keys = ("r",)

    def _allocate(self) -> None:
        p = self.width + 1 + int(self.target)
        self.r = np.zeros((self.shards, self.layers, p, p))
        self._factors: dict[int, np.ndarray] = {}  # all shards' factor per layer

    def add(self, shard: int, x: np.ndarray, y: np.ndarray) -> None:
        super().add(shard, x, y)
        self._factors = {}

    def merge(self, other: Accumulator) -> None:
        super().merge(other)
        self._factors = {}

    def _block(self, ys: np.ndarray):
        # stack = [R | rows of (1, x − shift, y − shift_y)]: its triangular
        # factor is the factor of everything this shard has seen.
        n, d, p = ys.size, self.width, self.r.shape[-1]
        stack = np.empty((p + n, p))
        stack[p:, 0] = 1.0
        if self.target:
            stack[p:, d + 1] = ys
        xs = stack[p:, 1:d + 1]

        def add_layer(s: int, layer: int) -> None:
            stack[:p] = self.r[s, layer]
            self.r[s, layer] = np.linalg.qr(stack, mode="r")
            self.sx[s, layer] += xs.sum(axis=0)

        return xs, add_layer

    def _rebase_scatter(self, out: Accumulator, delta: np.ndarray, eps_y: float) -> None:
        # [1 | x−a | y−c_a] = [1 | x−b | y−c_b] T with T = I + e₀[0, δ, ε]: only
        # row 0 of the factor changes (its other rows are 0 in column 0).
        d = self.width
        out.r = self.r.copy()
        out.r[:, :, 0, 1:d + 1] += out.r[:, :, 0, :1] * delta
        if self.target:
            out.r[:, :, 0, d + 1] += out.r[:, :, 0, 0] * eps_y

    def _merge_scatter(self, other: Accumulator) -> None:
        for s, layer in np.ndindex(*other.r.shape[:2]):
            if other.n[s]:  # an empty shard's factor is zero
                self.r[s, layer] = _stack_factor(self.r[s, layer], other.r[s, layer])

    def _total_scatter(self, mom: Moments, layer: int) -> None:
        if layer not in self._factors:  # residuals, rank and condition share it
            self._factors[layer] = _stack_factor(*self.r[self.n > 0, layer])
        mom.r = self._factors[layer]

    def _left_out_scatter(self, moms: list[Moments], layer: int, parts: np.ndarray) -> None:
        factors = _leave_one_out_factors([self.r[i, layer] for i in parts])
        for mom, factor in zip(moms, factors):
            mom.r = factor


ACCUMULATORS: dict[str, type[Accumulator]] = {
    cls.method: cls for cls in (GramAccumulator, QRAccumulator)}
"""The accumulator class of each method."""
METHODS = tuple(ACCUMULATORS)
"""The accumulation methods, default first."""


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
