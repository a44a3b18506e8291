"""The sums every accumulator keeps, and the interface :class:`LayerStats
<audit.stats.layer_stats.LayerStats>` uses; one subclass per method and storage
(:mod:`audit.stats.gram`, :mod:`audit.stats.spilled_gram`, :mod:`audit.stats.qr`).

An accumulator keeps, per shard and layer, the sufficient statistics of the
examples it has seen, in float64 and around fixed shifts (the first batch's
feature mean per layer, the rounded mean target), so that large means cost no
precision:

* shared by every method (:class:`Accumulator`): counts ``n`` [g], ``sx``
  [g, layers, d] = Σ(x−a); for token_id ``sy``, ``syy`` [g] and the target's
  range per shard; for the class-based measures, sparse per-class sums: one
  slot per distinct (shard, target) pair seen (in arrival order), its shard
  ``pair_shards`` [P], target ``pair_ids`` [P], count ``pc`` [P] and sums ``ps``
  (one array per layer, [P, d]) = Σ_{shard, y=c}(x−a);
* the feature scatter, in the form of the method: Gram matrices ``sxx``
  [g, layers, d, d] and ``sxy`` [g, layers, d] (``"gram"``), or triangular
  factors ``r`` [g, layers, p, p] of [1 | x−a | y−c] (``"qr"``).

Memory, in float64 values (8 bytes): the scatter as its subclass says; the
vectors, shards × layers × d × (1 + target); the class sums, layers × d × P for
the P distinct (shard, target) pairs seen (a target seen in one shard costs one
slot), each layer's growing on its own (capacity × 1.5, the unused part zero
pages that become resident only when written); an update adds a transient of
n × (d+2) + (d+2)² for a batch of n examples.

The interface: :meth:`~Accumulator.add` (a block of examples),
:meth:`~Accumulator.rebased` (the same sums around other shifts),
:meth:`~Accumulator.merge`, :meth:`~Accumulator.copy`, :meth:`~Accumulator.total`
and :meth:`~Accumulator.left_out` (the :class:`~audit.stats.measures.Moments` of
all shards, or of all but one, one at a time), :meth:`~Accumulator.rcond`,
:meth:`~Accumulator.value` and :meth:`~Accumulator.spectrum` (the method's
:attr:`~Accumulator.formulas` from :mod:`audit.stats.measures`),
:meth:`~Accumulator.to_arrays`, :meth:`~Accumulator.from_arrays` and
:meth:`~Accumulator.close`.  Inputs are checked by the caller.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from audit.stats import measures
from audit.stats.linalg import Workspace
from audit.stats.measures import Moments

_ARRAY_ORDER = ("shift_x", "shift_y", "sx", "r", "sxx", "sy", "syy", "ymin", "ymax", "sxy",
                "classes", "class_pair_shards", "class_pair_index", "class_pair_counts",
                "class_pair_sums")
"""Keys of :meth:`Accumulator.to_arrays`, in the order files have always had (the
class pairs' keys replaced ``class_counts`` [g, k] and ``class_sums``
[g, layers, k, d], dense, which :meth:`Accumulator.from_arrays` still reads)."""

_GROWTH = 1.5
"""Capacity factor of the class pairs' storage when it is full."""


@dataclass(frozen=True)
class ClassLayout:
    """Where the class pairs go in results (from :meth:`Accumulator.sorted_classes`,
    valid until the next update or merge): ``k``, the number of distinct targets;
    ``index`` int64 [P], the position of each pair slot's target among the sorted
    distinct targets; ``perm`` int64 [P], the pair slots sorted by (target,
    shard); ``shard_slots``, per shard, its pair slots (sorted by target)."""

    k: int
    index: np.ndarray
    perm: np.ndarray
    shard_slots: tuple[np.ndarray, ...]


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
            # One slot per distinct (shard, target) pair, in arrival order
            # (capacity grows by _GROWTH); results are always computed in sorted
            # class order (ClassLayout).
            self._set_pairs(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                            np.zeros(0, dtype=np.int64),
                            [np.zeros((0, width)) for _ in range(layers)])

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
    def _left_out_scatters(self, layer: int, parts: np.ndarray,
                           total: Moments | None = None) -> Iterator[dict]:
        """For each shard in ``parts``, in order, the scatter of all shards but that
        one (from ``total``, :meth:`total`'s moments of the layer, when given and
        the method subtracts), as the :class:`~audit.stats.measures.Moments` attributes to set (made when
        drawn, possibly in the previous one's arrays, so that one is in memory)."""

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
        """The relative rank cutoff of the method's solves (:mod:`audit.stats.measures`),
        for features whose coarsest machine epsilon is ``input_eps``."""
        return self.formulas.rcond(self.width, input_eps)

    def value(self, measure: str, mom: Moments, rcond: float, mapping: np.ndarray | None,
              work: Workspace | None = None) -> float:
        """``measure`` from ``mom`` (NaN when undefined), by the method's formulas;
        ``rcond`` from :meth:`rcond`, ``mapping`` from
        :func:`~audit.stats.measures.shuffled_ids` (``shuffled_token_id`` only),
        ``work`` scratch arrays reused from call to call."""
        return self.formulas.value(measure, mom, rcond, mapping, work)

    def spectrum(self, layer: int, input_eps: float, work: Workspace | None = None,
                 total: Moments | None = None) -> tuple[np.ndarray, float]:
        """Singular values of the centred, column-scaled features of ``layer``
        (descending) and the relative cutoff above which they count as rank;
        ``total``: :meth:`total` of the layer, if already at hand."""
        if total is None:
            total = self.total(layer, None)
        return self.formulas.spectrum(total, self.rcond(input_eps), work)

    # ------------------------------------------------------------------- add
    def add(self, shard: int, x: np.ndarray, y: np.ndarray) -> None:
        """Add a block of examples to ``shard``: features ``x`` float32 or float64
        [layers, *batch, d] (finite; a strided view is read layer by layer) and
        targets ``y`` int64 [n], n = the number of examples in the batch axes."""
        n, d, s = y.shape[0], self.width, shard
        ys = (y - self.shift_y).astype(np.float64)  # exact integers
        if self.classed:
            ids, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
            slots = self._pair_slots(s, ids)
            order = np.argsort(inv, kind="stable")
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self.pc[slots] += counts
        xs, add_layer = self._block(ys)
        for layer in range(self.layers):
            np.subtract(x[layer].reshape(n, d), self.shift_x[layer], out=xs)  # copies a strided layer
            add_layer(s, layer)
            if self.classed:
                self.ps[layer][slots] += np.add.reduceat(
                    xs[order], starts, axis=0, dtype=np.float64)
        if self.target:
            self.sy[s] += ys.sum()
            self.syy[s] += ys @ ys
            self.ymin[s] = min(self.ymin[s], int(y.min()))
            self.ymax[s] = max(self.ymax[s], int(y.max()))
        self.n[s] += n

    # --------------------------------------------------------- class pairs
    def _set_pairs(self, ids: np.ndarray, shards: np.ndarray, counts: np.ndarray,
                   sums: list[np.ndarray]) -> None:
        """Set the class pairs (arrays owned from now on, capacity their length)."""
        self.npairs = ids.size
        self.pair_ids, self.pair_shards, self.pc, self.ps = ids, shards, counts, sums
        self._lookup: list[tuple[np.ndarray, np.ndarray]] | None = None

    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The used part of ``pair_ids``, ``pair_shards`` and ``pc`` (views)."""
        p = self.npairs
        return self.pair_ids[:p], self.pair_shards[:p], self.pc[:p]

    def _index(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per shard, its pairs' targets sorted, int64 [k_s], and their slots."""
        if self._lookup is None:
            ids, shards, _ = self._pairs()
            self._lookup = []
            for s in range(self.shards):
                slots = np.flatnonzero(shards == s)
                slots = slots[np.argsort(ids[slots], kind="stable")]
                self._lookup.append((ids[slots], slots))
        return self._lookup

    def _pair_slots(self, shard: int, ids: np.ndarray) -> np.ndarray:
        """Slots of the pairs (``shard``, each of the sorted distinct ``ids`` [u]),
        creating the missing ones (zero)."""
        known, slots_known = self._index()[shard]
        pos = np.searchsorted(known, ids)
        found = pos < known.size
        found[found] = known[pos[found]] == ids[found]
        slots = np.empty(ids.size, dtype=np.int64)
        slots[found] = slots_known[pos[found]]
        new = ids[~found]
        if new.size:
            start, need = self.npairs, self.npairs + new.size
            self._reserve(need)
            created = np.arange(start, need)
            self.pair_ids[start:need] = new
            self.pair_shards[start:need] = shard
            self.pc[start:need] = 0
            for sums in self.ps:
                sums[start:need] = 0.0
            self.npairs = need
            slots[~found] = created
            at = pos[~found]  # sorted: np.insert keeps ``known`` sorted
            self._lookup[shard] = (np.insert(known, at, new), np.insert(slots_known, at, created))
        return slots

    def _reserve(self, need: int) -> None:
        """Make room for ``need`` pairs: capacity × 1.5 (at least ``need``), one
        layer's sums at a time (new arrays are zero pages, resident only once
        written), so a growth holds one layer's old and new sums at once."""
        cap = self.pair_ids.size
        if need <= cap:
            return
        cap = max(need, int(cap * _GROWTH), 16)
        used = self.npairs
        for name in ("pair_ids", "pair_shards", "pc"):
            old = getattr(self, name)
            grown = np.zeros(cap, dtype=np.int64)
            grown[:used] = old[:used]
            setattr(self, name, grown)
        for layer in range(self.layers):
            grown = np.zeros((cap, self.width))
            grown[:used] = self.ps[layer][:used]
            self.ps[layer] = grown  # the old one is freed here

    def sorted_classes(self) -> tuple[np.ndarray, ClassLayout]:
        """The distinct targets seen, sorted, int64 [k], and where the pairs go
        among them (:class:`ClassLayout`, for :meth:`total` and :meth:`left_out`)."""
        ids, shards, _ = self._pairs()
        classes, index = np.unique(ids, return_inverse=True)
        index = index.reshape(-1).astype(np.int64, copy=False)
        perm = np.lexsort((shards, index))  # by target, then shard
        by_shard = shards[perm]
        shard_slots = tuple(perm[by_shard == s] for s in range(self.shards))
        return classes, ClassLayout(k=classes.size, index=index, perm=perm,
                                    shard_slots=shard_slots)

    # ----------------------------------------------------------------- merge
    def rebased(self, shift_x: np.ndarray, shift_y: float) -> "Accumulator":
        """A new accumulator of the same examples with its sums around ``shift_x``
        and ``shift_y`` (δ = b − a, ε = c_b − c_a from the new shifts a, c_a to
        these b, c_b): Σ(x−a) = Σ(x−b) + n δ, and the method's scatter likewise
        (exact in exact arithmetic)."""
        return self._rebased(shift_x, shift_y, self.classed)

    def _rebased(self, shift_x: np.ndarray, shift_y: float, classes: bool) -> "Accumulator":
        """:meth:`rebased`, with the class pairs only if ``classes`` (else none)."""
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
        if self.classed and classes:
            ids, shards, counts = self._pairs()
            out._set_pairs(ids.copy(), shards.copy(), counts.copy(),
                           [self._rebased_sums(layer, None, delta) for layer in range(self.layers)])
        return out

    def _rebased_sums(self, layer: int, slots: np.ndarray | None, delta: np.ndarray) -> np.ndarray:
        """The sums of the pairs ``slots`` (None: all) of ``layer`` around the
        shift moved by −``delta`` [1, layers, d]: Σ(x−a) = Σ(x−b) + n δ."""
        p = self.npairs
        sums = self.ps[layer][:p] if slots is None else self.ps[layer][slots]
        counts = self.pc[:p] if slots is None else self.pc[slots]
        return sums + counts[:, None] * delta[0, layer][None, :]

    def merge(self, other: "Accumulator") -> None:
        """Add the examples of ``other`` (same method, shards, layers and width),
        its sums :meth:`rebased` around this accumulator's shifts."""
        b = other._rebased(self.shift_x, self.shift_y, classes=False)
        self.n += b.n
        self._merge_scatter(b)
        self.sx += b.sx
        if self.target:
            self.syy += b.syy
            self.sy += b.sy
            self.ymin = np.minimum(self.ymin, b.ymin)
            self.ymax = np.maximum(self.ymax, b.ymax)
        if self.classed and other.npairs:
            # other's pairs rebased here, one shard and layer at a time (not a
            # whole rebased copy of them), matched by (shard, target)
            delta = (other.shift_x - self.shift_x)[None]
            for s, (ids, theirs) in enumerate(other._index()):
                if ids.size:
                    slots = self._pair_slots(s, ids)
                    self.pc[slots] += other.pc[theirs]
                    for layer in range(self.layers):
                        self.ps[layer][slots] += other._rebased_sums(layer, theirs, delta)
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
            ids, shards, counts = self._pairs()
            out._set_pairs(ids.copy(), shards.copy(), counts.copy(),
                           [sums[: self.npairs].copy() for sums in self.ps])
        out._copy_scatter(self)
        return out

    # --------------------------------------------------------------- moments
    def _shared_total(self, layer: int, classes: ClassLayout | None) -> Moments:
        """Moments of all shards without the scatter; class sums in sorted class
        order as ``classes`` places them (none when it is None), each class's
        summed over its shards in shard order."""
        full = self.n > 0
        mom = Moments(n=int(self.n.sum()), sx=self.sx[:, layer].sum(axis=0))
        if self.target:
            mom.sy, mom.syy = self.sy.sum(), self.syy.sum()
            mom.distinct = bool(self.ymin[full].min() < self.ymax[full].max())
        if self.classed and classes is not None:
            mom.nc = np.zeros(classes.k, dtype=np.int64)
            mom.sc = np.zeros((classes.k, self.width))
            for slots in classes.shard_slots:  # distinct classes within a shard
                at = classes.index[slots]
                mom.nc[at] += self.pc[slots]
                mom.sc[at] += self.ps[layer][slots]
        return mom

    def total(self, layer: int, classes: ClassLayout | None) -> Moments:
        """Moments of ``layer`` over all shards, class sums in sorted class order
        as ``classes`` (from :meth:`sorted_classes`; None: no class sums) places them."""
        mom = self._shared_total(layer, classes)
        self._total_scatter(mom, layer)
        return mom

    def left_out(self, layer: int, classes: ClassLayout | None, parts: np.ndarray,
                 total: Moments | None = None) -> Iterator[Moments]:
        """Moments of ``layer`` with each shard in ``parts`` left out, in order: the
        total minus that shard's sums (the method's scatter as it allows); ``total``:
        :meth:`total` of the same layer and ``classes``, if already at hand (not
        summed again).  Each is made when drawn, and its scatter may be
        overwritten by the next: use one before drawing the next (one is held in
        memory)."""
        scatter_total = total
        if total is None:
            total = self._shared_total(layer, classes)
        for i, scatter in zip(parts, self._left_out_scatters(layer, parts, scatter_total)):
            keep = (self.n > 0) & (np.arange(self.shards) != i)
            mom = Moments(n=total.n - int(self.n[i]), sx=total.sx - self.sx[i, layer])
            if self.target:
                mom.sy, mom.syy = total.sy - self.sy[i], total.syy - self.syy[i]
                mom.distinct = bool(self.ymin[keep].min() < self.ymax[keep].max())
            if total.nc is not None:  # minus shard i's pairs, at their classes
                slots = classes.shard_slots[i]
                at = classes.index[slots]
                mom.nc, mom.sc = total.nc.copy(), total.sc.copy()
                mom.nc[at] -= self.pc[slots]
                mom.sc[at] -= self.ps[layer][slots]
            for key, value in scatter.items():
                setattr(mom, key, value)
            yield mom

    # --------------------------------------------------------- serialisation
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The sums as plain numpy arrays (copies); :meth:`from_arrays` reads them
        back.  Class sums: ``classes`` the sorted distinct targets [k] and, per
        (shard, target) pair seen, sorted by (target, shard) whatever the order
        of arrival, ``class_pair_shards``, ``class_pair_index`` (into
        ``classes``), ``class_pair_counts`` int64 [P] and ``class_pair_sums``
        float64 [layers, P, d]."""
        d = {"shift_x": self.shift_x.copy(), "shift_y": np.array(self.shift_y),
             "sx": self.sx.copy()}
        d.update(self._scatter_arrays())
        if self.target:
            d.update(sy=self.sy.copy(), syy=self.syy.copy(),
                     ymin=self.ymin.copy(), ymax=self.ymax.copy())
        if self.classed:
            ids, classes = self.sorted_classes()
            perm = classes.perm
            sums = np.empty((self.layers, perm.size, self.width))
            for layer in range(self.layers):
                np.take(self.ps[layer], perm, axis=0, out=sums[layer])
            d.update(classes=ids, class_pair_shards=self.pair_shards[perm],
                     class_pair_index=classes.index[perm], class_pair_counts=self.pc[perm],
                     class_pair_sums=sums)
        return {key: d[key] for key in _ARRAY_ORDER if key in d}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], shards: int, target: bool,
                    classed: bool, **options) -> "Accumulator":
        """Rebuild from :meth:`to_arrays` output plus the counts ``a["n"]``;
        ``options`` as the class's constructor takes them.  Class sums are read
        as pairs or, as earlier versions wrote them, dense (``class_counts``
        [g, k], ``class_sums`` [g, layers, k, d]: the pairs with a count).
        Raises KeyError for a missing key, ValueError for a shape or a value
        that does not fit."""
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
            out._load_pairs(a)
        return out

    def _load_pairs(self, a: dict[str, np.ndarray]) -> None:
        """Set the class pairs from :meth:`to_arrays` output, new or dense."""
        g, layers, d = self.shards, self.layers, self.width
        ids = np.asarray(a["classes"])
        if ids.ndim != 1:
            raise ValueError(f"classes has shape {ids.shape}, expected one axis")
        ids = ids.astype(np.int64)
        k = ids.size
        if np.any(ids[1:] <= ids[:-1]):
            raise ValueError("classes are not sorted and distinct")
        if "class_pair_counts" in a or "class_counts" not in a:
            counts = np.asarray(a["class_pair_counts"])
            p = counts.shape[0] if counts.ndim == 1 else -1
            for key, want in (("class_pair_counts", (p,)), ("class_pair_shards", (p,)),
                              ("class_pair_index", (p,)), ("class_pair_sums", (layers, p, d))):
                if np.shape(a[key]) != want:
                    raise ValueError(f"{key} has shape {np.shape(a[key])}, expected {want}")
            shards = np.asarray(a["class_pair_shards"]).astype(np.int64)
            index = np.asarray(a["class_pair_index"]).astype(np.int64)
            counts = counts.astype(np.int64)
            if np.any((shards < 0) | (shards >= g)) or np.any((index < 0) | (index >= k)):
                raise ValueError("class_pair_shards or class_pair_index is out of range")
            if np.any(counts < 1):
                raise ValueError("class_pair_counts holds a count below 1")
            key = index * g + shards  # < k × g: no overflow
            if np.unique(key).size != p:
                raise ValueError("a (shard, class) pair appears twice")
            if np.unique(index).size != k:
                raise ValueError("a class has no (shard, class) pair")
            sums = np.asarray(a["class_pair_sums"])
            self._set_pairs(ids[index], shards, counts,
                            [np.array(sums[layer], dtype=np.float64) for layer in range(layers)])
        else:
            dense_counts, dense_sums = np.asarray(a["class_counts"]), a["class_sums"]
            for key, value, want in (("class_counts", dense_counts, (g, k)),
                                     ("class_sums", dense_sums, (g, layers, k, d))):
                if np.shape(value) != want:
                    raise ValueError(f"{key} has shape {np.shape(value)}, expected {want}")
            index, shards = np.nonzero(dense_counts.T > 0)  # sorted by (class, shard)
            self._set_pairs(ids[index], shards.astype(np.int64),
                            dense_counts[shards, index].astype(np.int64),
                            [np.asarray(dense_sums[shards, layer, index], dtype=np.float64)
                             for layer in range(layers)])
