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

Where the scatter is kept (``storage``): in memory, all shards at once
(``GramAccumulator``, ``QRAccumulator``), or, for ``"gram"`` only, with the
closed shards' Gram matrices written to a temporary folder on disk
(:class:`SpilledGramAccumulator`, ``storage="spill"``), so that only the shard
being fed is in memory.  Memory kept, in float64 values (8 bytes):

* in memory: shards × layers × d² (``"qr"``: shards × layers × (d+2)²);
* spilled: layers × d² (the open shard), plus a transient of about 8 × d² while
  results are computed (one layer's total, one shard's Gram, one left-out
  scatter and the solve's workspace); on disk, layers × d(d+1)/2 per closed
  shard (upper triangles, packed) and per layer once results have been asked for
  (the cached totals);
* both: the vectors, shards × layers × d × (1 + target), and the class sums,
  shards × layers × k × d, stay in memory; an update adds a transient of
  n × (d+2) + (d+2)² for a batch of n examples (one layer's shifted features in
  float64 and its product: the float32 batch the caller holds, layers × n × d ×
  4 bytes, is larger as soon as there are more than two layers).

The interface, all a :class:`~audit.stats.LayerStats` uses: :meth:`~Accumulator.add`
(a block of examples), :meth:`~Accumulator.rebased` (the same sums around other
shifts), :meth:`~Accumulator.merge`, :meth:`~Accumulator.copy`,
:meth:`~Accumulator.total` and :meth:`~Accumulator.left_out` (the
:class:`~audit.measures.Moments` of all shards, or of all but one, one at a time),
:meth:`~Accumulator.rcond`, :meth:`~Accumulator.value` and
:meth:`~Accumulator.spectrum` (the method's :attr:`~Accumulator.formulas` from
:mod:`audit.measures`), :meth:`~Accumulator.to_arrays`,
:meth:`~Accumulator.from_arrays` and :meth:`~Accumulator.close`.  Inputs are
checked by the caller.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from audit import measures
from audit.errors import StatsError
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
    storage: ClassVar[str] = "memory"
    """Where the scatter is kept: ``"memory"`` (every shard) or ``"spill"``."""

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
    def _left_out_scatters(self, layer: int, parts: np.ndarray) -> Iterator[dict]:
        """For each shard in ``parts``, in order, the scatter of all shards but that
        one, as the :class:`~audit.measures.Moments` attributes to set (made when
        drawn, so that a caller holding one at a time holds one in memory)."""

    @abstractmethod
    def _copy_scatter(self, source: "Accumulator") -> None:
        """Set this (new, empty) accumulator's scatter to ``source``'s (same
        method and shifts, any storage)."""

    @abstractmethod
    def _scatter_arrays(self) -> dict[str, np.ndarray]:
        """The scatter as plain arrays (copies), keyed by :attr:`scatter_keys`."""

    @abstractmethod
    def _load_scatter(self, a: dict[str, np.ndarray]) -> None:
        """Set the scatter from :meth:`to_arrays` output ``a`` (with ``a["n"]``)."""

    def _options(self) -> dict:
        """Keyword arguments, besides the shapes and shifts, that a new
        accumulator of this class needs to keep its sums as this one does."""
        return {}

    def close(self) -> None:
        """Release what the sums hold outside this object (a spill folder); the
        accumulator must not be used afterwards."""

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
                         self.target, self.classed, **self._options())
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
        b.close()

    def copy(self, cls: "type[Accumulator] | None" = None, **options) -> "Accumulator":
        """The same sums in a new accumulator of class ``cls`` (default: this
        one's; any class of the same method, to change where the scatter is kept)
        built with ``options`` (default: this one's)."""
        if cls is None:
            cls, options = type(self), (options or self._options())
        out = cls(self.shards, self.layers, self.width, self.shift_x.copy(), self.shift_y,
                  self.target, self.classed, **options)
        out.n, out.sx = self.n.copy(), self.sx.copy()
        if self.target:
            out.sy, out.syy = self.sy.copy(), self.syy.copy()
            out.ymin, out.ymax = self.ymin.copy(), self.ymax.copy()
        if self.classed:
            out.k, out.ids = self.k, self.ids.copy()
            out.nc, out.sc = self.nc.copy(), self.sc.copy()
        out._copy_scatter(self)
        return out

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
                 parts: np.ndarray) -> Iterator[Moments]:
        """Moments of ``layer`` with each shard in ``parts`` left out, in order: the
        total minus that shard's sums (the method's scatter as it allows).  Each is
        made when drawn: use one before drawing the next to hold one in memory."""
        total = self._shared_total(layer, order)
        for i, scatter in zip(parts, self._left_out_scatters(layer, parts)):
            keep = (self.n > 0) & (np.arange(self.shards) != i)
            mom = Moments(n=total.n - int(self.n[i]), sx=total.sx - self.sx[i, layer])
            if self.target:
                mom.sy, mom.syy = total.sy - self.sy[i], total.syy - self.syy[i]
                mom.distinct = bool(self.ymin[keep].min() < self.ymax[keep].max())
            if total.nc is not None:
                mom.nc = total.nc - self.nc[i, order]
                mom.sc = total.sc - self.sc[i, layer][order]
            for key, value in scatter.items():
                setattr(mom, key, value)
            yield mom

    # --------------------------------------------------------- serialisation
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The sums as plain numpy arrays (copies), classes in sorted order;
        :meth:`from_arrays` reads them back."""
        d = {"shift_x": self.shift_x.copy(), "shift_y": np.array(self.shift_y),
             "sx": self.sx.copy()}
        d.update(self._scatter_arrays())
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
                    classed: bool, **options) -> "Accumulator":
        """Rebuild from :meth:`to_arrays` output plus the counts ``a["n"]``;
        ``options`` as the class's constructor takes them.  Raises KeyError for a
        missing key, ValueError for a shape that does not fit."""
        _, layers, d = a["sx"].shape
        out = cls(shards, layers, d, a["shift_x"].astype(np.float64).copy(),
                  float(a["shift_y"]), target, classed, **options)
        out.n = a["n"].astype(np.int64).copy()
        out.sx[...] = a["sx"]
        out._load_scatter(a)
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
            target = self._gram_slot(s, layer)  # a view: added in place
            target += gram[:d, :d]
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
        self._rebase_sxy(out, delta, eps_y)

    def _rebase_sxy(self, out: Accumulator, delta: np.ndarray, eps_y: float) -> None:
        # Σ(x−a)(y−c_a) = Σ(x−b)(y−c_b) + ε Σ(x−b) + δ Σ(y−c_b) + n δ ε.
        if self.target:
            nb = self.n.astype(np.float64)[:, None, None]
            out.sxy = (self.sxy + eps_y * self.sx + self.sy[:, None, None] * delta
                       + nb * delta * eps_y)

    def gram(self, shard: int, layer: int) -> np.ndarray:
        """Σ(x−a)(x−a)ᵀ of one shard and layer, float64 [d, d] (not to be written
        into: it may be the accumulator's own storage)."""
        return self.sxx[shard, layer]

    def _gram_slot(self, shard: int, layer: int) -> np.ndarray:
        """The storage of one shard's and layer's Gram matrix [d, d], to add into."""
        return self.sxx[shard, layer]

    def _merge_scatter(self, other: Accumulator) -> None:
        if other.storage == "memory":
            self.sxx += other.sxx
        else:  # one shard and layer at a time
            for s, layer in np.ndindex(self.shards, self.layers):
                if other.n[s]:
                    self.sxx[s, layer] += other.gram(s, layer)
        if self.target:
            self.sxy += other.sxy

    def _copy_scatter(self, source: Accumulator) -> None:
        if source.storage == "memory":
            self.sxx = source.sxx.copy()
        else:
            for s, layer in np.ndindex(self.shards, self.layers):
                if source.n[s]:
                    self.sxx[s, layer] = source.gram(s, layer)
        if self.target:
            self.sxy = source.sxy.copy()

    def _scatter_arrays(self) -> dict[str, np.ndarray]:
        d = {"sxx": self.sxx.copy()}
        if self.target:
            d["sxy"] = self.sxy.copy()
        return d

    def _load_scatter(self, a: dict[str, np.ndarray]) -> None:
        self.sxx[...] = a["sxx"]
        if self.target:
            self.sxy[...] = a["sxy"]

    def _sums(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Σ over shards of ``sxx`` [d, d] and ``sxy`` [d] (None without a target)."""
        return (self.sxx[:, layer].sum(axis=0),
                self.sxy[:, layer].sum(axis=0) if self.target else None)

    def _total_scatter(self, mom: Moments, layer: int) -> None:
        mom.sxx, mom.sxy = self._sums(layer)

    def _left_out_scatters(self, layer: int, parts: np.ndarray) -> Iterator[dict]:
        sxx, sxy = self._sums(layer)
        for i in parts:
            scatter = {"sxx": sxx - self.sxx[i, layer]}
            if self.target:
                scatter["sxy"] = sxy - self.sxy[i, layer]
            yield scatter


class SpilledGramAccumulator(GramAccumulator):
    """``method="gram"``, ``storage="spill"``: the Gram matrices of one shard at a
    time in memory, those of the others on disk.

    The shard being fed (the open shard) keeps its Gram matrices in memory,
    float64 [layers, d, d]; feeding another shard writes them to a
    :class:`SpillFolder`, one file per shard and layer (the upper triangle, packed:
    nothing is lost, since every Gram matrix is exactly symmetric), frees them and
    opens the new shard (read back in if it was written before).  Shards fed in
    contiguous blocks, as :mod:`audit.probe` assigns windows, are each written
    once; feeding them interleaved is correct but costs a write and a read of
    layers × d(d+1)/2 values per switch.  Results go layer by layer: a layer's
    total is the sum of its shards' matrices read one at a time, in shard order
    (so equal bit for bit to :class:`GramAccumulator`'s for the same updates), and
    is kept in the folder until the next update or merge; each left-out scatter is
    that total minus one shard's matrix, made when drawn.

    Memory, in float64 values: layers × d² (the open shard) and, while results
    are computed, about 8 × d² (one layer's total, one shard's matrix, the left-out
    scatter in use and the next, the solve's workspace), plus what every
    accumulator keeps (vectors and class sums: :mod:`audit.accumulators`).  Disk:
    layers × d(d+1)/2 per closed shard, and as much again for the cached totals.
    Merges, copies and :meth:`from_arrays` go one shard and layer at a time;
    :meth:`to_arrays` builds every shard's matrices in memory (shards × layers × d²).
    """

    storage = "spill"

    def __init__(self, shards: int, layers: int, width: int, shift_x: np.ndarray,
                 shift_y: float, target: bool, classed: bool,
                 spill_dir: str | Path | None = None) -> None:
        self.spill_dir = spill_dir
        # closed shards and totals: shards × layers upper triangles at most
        self.folder = SpillFolder(spill_dir, need=shards * layers * width * (width + 1) * 4)
        self.open_shard: int | None = None
        self._open: np.ndarray | None = None  # the open shard's Grams [layers, d, d]
        self._stored = np.zeros((shards, layers), dtype=bool)  # (shard, layer) in the folder
        self._totals: set[int] = set()  # layers whose total is in the folder
        super().__init__(shards, layers, width, shift_x, shift_y, target, classed)

    def _options(self) -> dict:
        return {"spill_dir": self.spill_dir}

    def _allocate(self) -> None:
        if self.target:
            self.sxy = np.zeros((self.shards, self.layers, self.width))

    def close(self) -> None:
        self._open = self.open_shard = None
        self.folder.close()

    # ------------------------------------------------------------ storage
    def add(self, shard: int, x: np.ndarray, y: np.ndarray) -> None:
        self._open_for_update(shard)
        self._forget_totals()
        super().add(shard, x, y)

    def _open_for_update(self, shard: int) -> None:
        """Make ``shard`` the open shard: write the open one out first (it stays
        open if that fails), then free it."""
        if self.open_shard == shard:
            return
        if self.open_shard is not None:
            for layer in range(self.layers):
                self.folder.write(_shard_file(self.open_shard, layer), self._open[layer])
                self._stored[self.open_shard, layer] = True
            self._open = self.open_shard = None
        block = np.zeros((self.layers, self.width, self.width))
        for layer in np.flatnonzero(self._stored[shard]):
            self.folder.read_upper(_shard_file(shard, layer), block[layer])
            _mirror_upper(block[layer])
        self._open, self.open_shard = block, shard

    def _gram_slot(self, shard: int, layer: int) -> np.ndarray:
        return self._open[layer]  # add() opened the shard

    def gram(self, shard: int, layer: int) -> np.ndarray:
        if shard == self.open_shard:
            return self._open[layer]
        out = np.zeros((self.width, self.width))
        if self._stored[shard, layer]:
            self.folder.read_upper(_shard_file(shard, layer), out)
            _mirror_upper(out)
        return out

    def _put(self, shard: int, layer: int, matrix: np.ndarray) -> None:
        """Set one shard's and layer's Gram matrix (symmetric [d, d])."""
        if shard == self.open_shard:
            self._open[layer] = matrix
        else:
            self.folder.write(_shard_file(shard, layer), matrix)
            self._stored[shard, layer] = True
        self._forget_totals()

    def _forget_totals(self) -> None:
        for layer in self._totals:
            self.folder.remove(_total_file(layer))
        self._totals.clear()

    def _total_gram(self, layer: int) -> np.ndarray:
        """Σ over shards of ``layer``'s Gram matrices [d, d], summed in shard
        order as :meth:`GramAccumulator._sums` does (upper triangles, then
        mirrored), from the folder's cache when it holds it."""
        d = self.width
        total = np.zeros((d, d))
        if not self._stored[:, layer].any():  # only the open shard: nothing to read
            if self.open_shard is not None:
                total += self._open[layer]
        elif layer in self._totals:
            self.folder.read_upper(_total_file(layer), total)
        else:
            buf = np.zeros((d, d))  # its lower triangle stays 0
            for s in range(self.shards):
                if s == self.open_shard:
                    total += self._open[layer]
                elif self._stored[s, layer]:
                    self.folder.read_upper(_shard_file(s, layer), buf)
                    total += buf
            self.folder.write(_total_file(layer), total)
            self._totals.add(layer)
        _mirror_upper(total)
        return total

    # ---------------------------------------------------- the method's part
    def _rebase_scatter(self, out: Accumulator, delta: np.ndarray, eps_y: float) -> None:
        # GramAccumulator's formula, one shard and layer at a time
        for s, layer in np.ndindex(self.shards, self.layers):
            if self.n[s]:
                sx_b, dl = self.sx[s, layer], delta[0, layer]
                out._put(s, layer, self.gram(s, layer)
                         + sx_b[:, None] * dl[None, :]
                         + dl[:, None] * sx_b[None, :]
                         + float(self.n[s]) * dl[:, None] * dl[None, :])
        self._rebase_sxy(out, delta, eps_y)

    def _merge_scatter(self, other: Accumulator) -> None:
        for s, layer in np.ndindex(self.shards, self.layers):
            if other.n[s]:
                self._put(s, layer, self.gram(s, layer) + other.gram(s, layer))
        if self.target:
            self.sxy += other.sxy

    def _copy_scatter(self, source: Accumulator) -> None:
        for s, layer in np.ndindex(self.shards, self.layers):
            if source.n[s]:
                self._put(s, layer, source.gram(s, layer))
        if self.target:
            self.sxy = source.sxy.copy()

    def _scatter_arrays(self) -> dict[str, np.ndarray]:
        sxx = np.empty((self.shards, self.layers, self.width, self.width))
        for s, layer in np.ndindex(self.shards, self.layers):
            sxx[s, layer] = self.gram(s, layer)
        d = {"sxx": sxx}
        if self.target:
            d["sxy"] = self.sxy.copy()
        return d

    def _load_scatter(self, a: dict[str, np.ndarray]) -> None:
        sxx = a["sxx"]
        if sxx.shape != (self.shards, self.layers, self.width, self.width):
            raise ValueError(f"sxx has shape {sxx.shape}, expected "
                             f"{(self.shards, self.layers, self.width, self.width)}")
        for s, layer in np.ndindex(self.shards, self.layers):
            if self.n[s]:
                self._put(s, layer, sxx[s, layer])
        if self.target:
            self.sxy[...] = a["sxy"]

    def _total_scatter(self, mom: Moments, layer: int) -> None:
        mom.sxx = self._total_gram(layer)
        mom.sxy = self.sxy[:, layer].sum(axis=0) if self.target else None

    def _left_out_scatters(self, layer: int, parts: np.ndarray) -> Iterator[dict]:
        total = self._total_gram(layer)
        sxy = self.sxy[:, layer].sum(axis=0) if self.target else None
        buf = np.zeros((self.width, self.width))  # its lower triangle stays 0
        for i in parts:
            if i == self.open_shard:
                shard = self._open[layer]
            elif self._stored[i, layer]:
                self.folder.read_upper(_shard_file(i, layer), buf)
                shard = buf
            else:  # a shard that holds no examples
                shard = 0.0
            left = total - shard  # its upper triangle is GramAccumulator's
            _mirror_upper(left)
            scatter = {"sxx": left}
            if self.target:
                scatter["sxy"] = sxy - self.sxy[i, layer]
            yield scatter


class SpillFolder:
    """A temporary folder of float64 symmetric matrices, one file each: the upper
    triangle, row by row (d(d+1)/2 values, native byte order).

    Made at the first write, in ``parent`` (default: :func:`tempfile.gettempdir`,
    which follows ``TMPDIR``), named ``equilaw-spill-*``, after checking that the
    disk there has ``need`` bytes free; removed with everything in it by
    :meth:`close`, when this object is garbage-collected, or at interpreter exit
    (:func:`weakref.finalize`), so that an exception anywhere leaves nothing
    behind.  A process killed by a signal (SIGTERM, SIGKILL, the kernel's
    out-of-memory killer) runs no clean-up: each folder names its owner (host and
    process id, in the file ``owner``), and making a new folder removes those in
    the same parent whose owner was a process of this host that has ended.
    Errors of the file system become :class:`~audit.errors.StatsError` naming the
    path."""

    def __init__(self, parent: str | Path | None = None, need: int = 0) -> None:
        self.parent = parent
        self.need = need
        self.path: Path | None = None
        self._finalizer: weakref.finalize | None = None
        self._closed = False

    def _folder(self) -> Path:
        if self._closed:
            raise StatsError("these statistics were closed: their spill folder was removed")
        if self.path is None:
            parent = tempfile.gettempdir() if self.parent is None else str(self.parent)
            free = shutil.disk_usage(parent).free
            if free < self.need:
                raise StatsError(
                    f"the spill folder's disk ({parent!r}) has {_size(free)} free, but the "
                    f"spilled statistics need up to {_size(self.need)}: free space there or "
                    f"choose spill_dir (or TMPDIR) on a larger disk")
            _remove_orphans(Path(parent))
            try:
                path = Path(tempfile.mkdtemp(prefix=_SPILL_PREFIX, dir=parent))
            except OSError as exc:
                raise StatsError(f"cannot make a spill folder in {parent!r}: {exc}") from None
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(path), ignore_errors=True)
            self.path = path
            try:
                (path / "owner").write_text(f"{socket.gethostname()} {os.getpid()}\n")
            except OSError as exc:
                self.close()
                raise StatsError(f"cannot write in the spill folder {str(path)!r}: {exc}") from None
        return self.path

    def write(self, name: str, matrix: np.ndarray) -> None:
        """Store the upper triangle of the square ``matrix`` as ``name``."""
        d = matrix.shape[0]
        packed = np.empty(d * (d + 1) // 2)
        pos = 0
        for i in range(d):  # row slices: no index arrays of d² entries
            packed[pos:pos + d - i] = matrix[i, i:]
            pos += d - i
        path = self._folder() / name
        try:
            packed.tofile(path)
        except OSError as exc:
            raise StatsError(f"cannot write the spilled statistics to {str(path)!r}: {exc}; "
                             f"free space there or choose another spill_dir") from None

    def read_upper(self, name: str, out: np.ndarray) -> None:
        """Write the upper triangle (diagonal included) of the matrix stored as
        ``name`` into ``out`` [d, d]; its strict lower triangle is left as it is."""
        d = out.shape[0]
        path = self._folder() / name
        try:
            packed = np.fromfile(path, dtype=np.float64)
        except OSError as exc:
            raise StatsError(f"cannot read the spilled statistics from {str(path)!r}: "
                             f"{exc}") from None
        if packed.size != d * (d + 1) // 2:
            raise StatsError(f"the spill file {str(path)!r} holds {packed.size} values, "
                             f"not the {d * (d + 1) // 2} of a {d}×{d} upper triangle")
        pos = 0
        for i in range(d):
            out[i, i:] = packed[pos:pos + d - i]
            pos += d - i

    def remove(self, name: str) -> None:
        if self.path is not None and not self._closed:
            (self.path / name).unlink(missing_ok=True)

    def bytes(self) -> int:
        """Bytes of the files in the folder now (0 before the first write)."""
        if self.path is None or self._closed:
            return 0
        return sum(f.stat().st_size for f in self.path.iterdir())

    def close(self) -> None:
        """Remove the folder and its files; later reads and writes raise."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()


_SPILL_PREFIX = "equilaw-spill-"


def _remove_orphans(parent: Path) -> None:
    """Remove the spill folders in ``parent`` left by ended processes of this host
    (see :class:`SpillFolder`); anything unreadable or foreign is left alone."""
    host = socket.gethostname()
    for folder in parent.glob(_SPILL_PREFIX + "*"):
        try:
            owner_host, pid = (folder / "owner").read_text().split()
            if owner_host != host or int(pid) == os.getpid():
                continue
            os.kill(int(pid), 0)  # raises ProcessLookupError once the process has ended
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):  # no owner file yet, not ours to judge, or alive
            continue


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _shard_file(shard: int, layer: int) -> str:
    return f"shard{shard}-layer{layer}.f64"


def _total_file(layer: int) -> str:
    return f"total-layer{layer}.f64"


def _mirror_upper(a: np.ndarray, block: int = 256) -> None:
    """Copy the upper triangle of the square ``a`` onto its lower one, in place,
    block by block (a transposed copy of whole rows would stride over d² values)."""
    d = a.shape[0]
    for i0 in range(0, d, block):
        i1 = min(i0 + block, d)
        diag = a[i0:i1, i0:i1]
        diag[...] = np.triu(diag) + np.triu(diag, 1).T
        for j0 in range(i1, d, block):
            j1 = min(j0 + block, d)
            a[j0:j1, i0:i1] = a[i0:i1, j0:j1].T


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

    def _copy_scatter(self, source: Accumulator) -> None:
        self.r = source.r.copy()

    def _scatter_arrays(self) -> dict[str, np.ndarray]:
        return {"r": self.r.copy()}

    def _load_scatter(self, a: dict[str, np.ndarray]) -> None:
        self.r[...] = a["r"]

    def _total_scatter(self, mom: Moments, layer: int) -> None:
        if layer not in self._factors:  # residuals, rank and condition share it
            self._factors[layer] = _stack_factor(*self.r[self.n > 0, layer])
        mom.r = self._factors[layer]

    def _left_out_scatters(self, layer: int, parts: np.ndarray) -> Iterator[dict]:
        # prefix and suffix combinations need every factor of the layer at once
        for factor in _leave_one_out_factors([self.r[i, layer] for i in parts]):
            yield {"r": factor}


ACCUMULATORS: dict[str, type[Accumulator]] = {
    cls.method: cls for cls in (GramAccumulator, QRAccumulator)}
"""The accumulator class of each method (every shard in memory)."""
METHODS = tuple(ACCUMULATORS)
"""The accumulation methods, default first."""
SPILLED: dict[str, type[Accumulator]] = {SpilledGramAccumulator.method: SpilledGramAccumulator}
"""The accumulator class of each method that can spill closed shards to disk."""


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
