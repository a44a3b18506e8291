"""Streaming, mergeable, sharded per-layer statistics for the prediction residual.

:class:`LayerStats` is the facade of the engine: it checks inputs, holds the
settings and asks for results.  It keeps only additive sufficient statistics, in
float64, in ``shards`` independent parts, so that memory does not grow with the
number of tokens, two accumulators merge exactly (``a + b``), and every measure's
jackknife uses leave-one-shard-out values taken from the shards' sums (the total
minus one shard, or with ``"qr"`` a combination of the other shards' factors)
without refitting.

Measures (docs/method.md defines them; ``residuals(measure)`` gives one value per
layer, float64 [layers]): ``token_id`` (PR of an in-sample OLS fit with intercept
from the layer's features to the next-token id, as lstsq computes it),
``shuffled_token_id`` (the same with the distinct ids permuted:
:func:`audit.stats.measures.shuffled_ids`, applied from per-class sums when results
are asked for, so independent of batch order), ``one_hot`` (multi-output OLS on
the one-hot target) and ``separation`` (fuzziness D = tr(SS_w · SS_b⁺)).

Numerics.  Sums are taken around a fixed per-layer shift (the first batch's mean),
so large means cost no precision; merges convert between shifts exactly (in exact
arithmetic).  ``method`` chooses how the feature scatter is kept, with κ the
condition number of the centred, column-scaled features (:meth:`condition`):

``"gram"`` (default)
    Gram matrices, one symmetric rank-n update per batch and layer; Cholesky
    solves with a minimum-norm fallback.  PR matches lstsq to about κ² × 1e-16
    relative.
``"qr"``
    Streaming triangular QR factors, slower; PR matches lstsq to about κ × 1e-16.
    For features whose κ nears 1e4 or more.

Float32 features are exact in float64 and accumulated in float64; only the rank
cutoff remembers that they were rounded (:func:`audit.stats.measures.scatter_rcond`).

Storage (``storage``).  In memory, every shard's Gram matrices take shards ×
layers × d² × 8 bytes; ``"spill"`` (``"gram"`` only) keeps the shard being fed in
memory (layers × d² × 8 bytes) and writes closed shards to a temporary folder
(``spill_dir``, default the system's), with results bit for bit those of memory
(:mod:`audit.stats.spilled_gram`); ``"auto"`` (default) spills above
:data:`AUTO_SPILL_BYTES` with ``"gram"`` and more than one shard; ``"memory"``
never spills.  Feed shards in contiguous blocks: each switch back to a shard reads
it from disk.  The folder goes with :meth:`LayerStats.close`, a ``with`` block,
garbage collection or interpreter exit.  README.md ("Performance") gives the
measured costs (bench/results.json).

Layers are indexed as in ``hidden_states``: 0 is the embedding output.  The sums
are kept by one accumulator per method and storage (:mod:`audit.stats.gram`,
:mod:`audit.stats.spilled_gram`, :mod:`audit.stats.qr`, their shared part in
:mod:`audit.stats.accumulator`); the measures are pure functions of their moments
(:mod:`audit.stats.measures`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.errors import StatsError
from audit.stats.accumulator import Accumulator, ClassLayout
from audit.stats.linalg import Workspace
from audit.stats.measures import CLASS_MEASURES, EPS, MEASURES, PERMUTATIONS, shuffled_ids
from audit.stats.methods import ACCUMULATORS, METHODS, SPILLED

STORAGES = ("auto", "memory", "spill")
"""Where the shards' Gram matrices are kept: see the module docstring."""
AUTO_SPILL_BYTES = 4 * 2**30
"""``storage="auto"`` spills when shards × layers × d² × 8 bytes exceed this."""


class LayerStats:
    """Streaming per-layer statistics of (features, next-token target) pairs.

    ``measures``: subset of :data:`MEASURES`; only what they need is kept.
    ``shards``: number of independent parts kept for the jackknife (1 turns
    uncertainty off and costs the least memory).  ``shuffle_seed``: seed of the
    ``shuffled_token_id`` permutation.  ``method``: how the feature scatter is
    accumulated, ``"gram"`` (default: Gram matrices, fast, relative error about
    κ² × 1e-16) or ``"qr"`` (streaming QR factors, slower, relative error about
    κ × 1e-16); see the module docstring.  ``permutation``: how
    ``shuffled_token_id`` permutes the ids, ``"equilaw"`` (default) or
    ``"reference"`` (the authors' construction, seed 0..2³²−1); see the module
    docstring.  ``storage``: where the shards' Gram matrices are kept,
    ``"auto"`` (default: on disk above :data:`AUTO_SPILL_BYTES`), ``"memory"``
    or ``"spill"`` (``method="gram"`` only; memory layers × d² × 8 bytes instead
    of shards × layers × d² × 8); ``spill_dir``: an existing folder in which the
    spill's temporary folder is made (default: the system's temporary folder);
    see the module docstring.  :meth:`close` (or a ``with`` block) removes the
    spill folder at once.  Shapes (layers, d) come from the first :meth:`update`.
    """

    def __init__(self, measures=("token_id",), shards: int = 10, shuffle_seed: int = 0,
                 method: str = "gram", permutation: str = "equilaw", storage: str = "auto",
                 spill_dir: str | os.PathLike | None = None) -> None:
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
        if permutation not in PERMUTATIONS:
            raise StatsError(f"unknown permutation {permutation!r}; valid permutations: "
                             f"{', '.join(PERMUTATIONS)}")
        if permutation == "reference" and not 0 <= shuffle_seed < 2**32:
            raise StatsError(f"permutation 'reference' seeds numpy.random.RandomState, which "
                             f"needs 0 <= shuffle_seed < 2**32, got {shuffle_seed!r}")
        if storage not in STORAGES:
            raise StatsError(f"unknown storage {storage!r}; valid storages: {', '.join(STORAGES)}")
        if storage == "spill" and method not in SPILLED:
            raise StatsError(f"storage 'spill' needs method {' or '.join(map(repr, SPILLED))}: "
                             f"method {method!r} keeps every shard in memory")
        if spill_dir is not None:
            if storage == "memory":
                raise StatsError("spill_dir is used only with storage 'spill' or 'auto', "
                                 "not 'memory'")
            if not isinstance(spill_dir, (str, os.PathLike)) or not Path(spill_dir).is_dir():
                raise StatsError(f"spill_dir must be an existing folder, got {spill_dir!r}")
        self._measures = tuple(m for m in MEASURES if m in measures)  # canonical order
        self._shards = int(shards)
        self._seed = int(shuffle_seed)
        self._method = str(method)
        self._permutation = str(permutation)
        self._storage = str(storage)
        self._spill_dir = spill_dir
        self._closed = False
        self._spectra_cache: tuple[np.ndarray, np.ndarray] | None = None
        self._token = "token_id" in self._measures
        self._classed = bool(CLASS_MEASURES & set(self._measures))
        self._acc: Accumulator | None = None
        """The sums, created by the first non-empty :meth:`update`."""
        self._input_eps = EPS
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
    def permutation(self) -> str:
        """How ``shuffled_token_id`` permutes the ids: ``"equilaw"`` or ``"reference"``."""
        return self._permutation

    @property
    def storage(self) -> str:
        """Where the Gram matrices are kept, as asked: ``"auto"``, ``"memory"`` or
        ``"spill"`` (:attr:`spilled` says what ``"auto"`` chose)."""
        return self._storage

    @property
    def spilled(self) -> bool:
        """Whether closed shards go to disk (known from the first example on;
        False before)."""
        return self._acc is not None and self._acc.storage == "spill"

    @property
    def spill_folder(self) -> Path | None:
        """The temporary folder holding spilled shards, None while there is none
        (in memory, before the first shard is closed, after :meth:`close`)."""
        if not self.spilled or self._acc.folder.path is None or self._closed:
            return None
        return self._acc.folder.path

    @property
    def count(self) -> int:
        """Number of examples (tokens) seen."""
        return 0 if self._acc is None else int(self._acc.n.sum())

    @property
    def layers(self) -> int | None:
        """Number of layers (hidden states), or None before the first example."""
        return None if self._acc is None else self._acc.layers

    @property
    def width(self) -> int | None:
        """Feature width d, or None before the first example."""
        return None if self._acc is None else self._acc.width

    @property
    def classes(self) -> np.ndarray:
        """Sorted distinct targets seen, int64 [k] (class-based measures only)."""
        if not self._classed:
            raise StatsError("classes are kept only for the measures "
                             + ", ".join(m for m in MEASURES if m in CLASS_MEASURES))
        if self._acc is None:
            return np.zeros(0, dtype=np.int64)
        return self._acc.sorted_classes()[0]

    @property
    def class_pairs(self) -> int:
        """Distinct (shard, target) pairs seen: the class sums hold layers × d
        float64 values for each (0 for ``token_id`` alone)."""
        if not self._classed or self._acc is None:
            return 0
        return int(self._acc.npairs)

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
        self._check_open()
        layers, d = x.shape[0], x.shape[-1]
        n = y.shape[0] if x.ndim > 3 else x.shape[1]
        example_axes = tuple(range(1, x.ndim - 1))
        if self.layers is not None and layers != self.layers:
            raise StatsError(f"features have {layers} layers, but earlier batches had {self.layers}")
        if self.width is not None and d != self.width:
            raise StatsError(f"features have width {d}, but earlier batches had width {self.width}")
        if y.shape[0] != n:
            raise StatsError(f"features have {n} examples per layer, but targets has {y.shape[0]}")
        if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)) \
                or not 0 <= shard < self._shards:
            raise StatsError(f"shard {shard!r} is out of range: this accumulator has "
                             f"{self._shards} shards (0..{self._shards - 1})")
        if n == 0 or layers == 0 or d == 0:
            return
        y = y.astype(np.int64, copy=False)

        # max/min propagate NaN and show ±inf: two cheap passes check every
        # value before anything is added, so a rejected batch leaves no trace.
        high = x.max(axis=(*example_axes, -1))
        low = x.min(axis=(*example_axes, -1))
        bad = ~(np.isfinite(high) & np.isfinite(low))
        if bad.any():
            raise StatsError("features contain NaN or infinite values", layer=int(np.argmax(bad)))

        if self._acc is None:
            cls, options = self._accumulator_class(layers, d)
            self._acc = cls(
                self._shards, layers, d, x.mean(axis=example_axes, dtype=np.float64),
                float(np.rint(y.mean())), target=self._token, classed=self._classed, **options)
        # Float32 features are exact in float64 and their Grams are formed in
        # float64 too; only the rank cutoff remembers that they were rounded.
        self._input_eps = max(self._input_eps, float(np.finfo(x.dtype).eps))
        self._acc.add(int(shard), x, y)
        self._spectra_cache = None

    def _accumulator_class(self, layers: int, width: int) -> tuple[type[Accumulator], dict]:
        """The accumulator class for these settings and shapes, and its options."""
        spill = self._storage == "spill" or (
            self._storage == "auto" and self._method in SPILLED and self._shards > 1
            and self._shards * layers * width * width * 8 > AUTO_SPILL_BYTES)
        if spill:
            return SPILLED[self._method], {"spill_dir": self._spill_dir}
        return ACCUMULATORS[self._method], {}

    def _check_open(self) -> None:
        if self._closed:
            raise StatsError("these statistics were closed: close() released their sums "
                             "(and removed their spill folder)")

    def close(self) -> None:
        """Release the sums now: the spill folder and its files are removed (they
        are anyway when the statistics are garbage-collected or the interpreter
        exits).  Every later use raises :class:`StatsError`."""
        if self._acc is not None:
            self._acc.close()
        self._acc = None
        self._spectra_cache = None
        self._closed = True

    def __enter__(self) -> "LayerStats":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---------------------------------------------------------------------- merge
    def merge(self, other: "LayerStats") -> "LayerStats":
        """A new accumulator equal to having seen the inputs of both.

        Both must have the same measures, shards, shuffle_seed, permutation and
        method, and (when both hold examples) the same layers and width;
        otherwise :class:`StatsError` says which differs.  Sums taken around
        different shifts are converted exactly (in exact arithmetic): see
        :meth:`audit.stats.accumulator.Accumulator.rebased`.  The result keeps its
        Gram matrices as this one's settings say (``storage``, ``spill_dir``),
        whatever ``other``'s; spilled sums are copied and merged one shard and
        layer at a time.
        """
        if not isinstance(other, LayerStats):
            raise StatsError(f"cannot merge LayerStats with {type(other).__name__}")
        self._check_open()
        other._check_open()
        for what, a, b in (("measures", self._measures, other._measures),
                           ("shards", self._shards, other._shards),
                           ("shuffle_seed", self._seed, other._seed),
                           ("permutation", self._permutation, other._permutation),
                           ("method", self._method, other._method)):
            if a != b:
                raise StatsError(f"cannot merge accumulators with different {what}: {a!r} vs {b!r}")
        if self._acc is not None and other._acc is not None:
            for what, a, b in (("layers", self.layers, other.layers),
                               ("width", self.width, other.width)):
                if a != b:
                    raise StatsError(
                        f"cannot merge accumulators with different {what}: {a!r} vs {b!r}")
        if other._acc is None:
            return self._copy(self)
        if self._acc is None:
            return self._copy(other)
        out = self._copy(self)
        out._input_eps = max(self._input_eps, other._input_eps)
        out._acc.merge(other._acc)
        return out

    def _copy(self, source: "LayerStats") -> "LayerStats":
        """New statistics with this one's settings holding a copy of ``source``'s
        sums (and the precision of its inputs)."""
        out = LayerStats(self._measures, self._shards, self._seed, self._method,
                         self._permutation, self._storage, self._spill_dir)
        out._input_eps = source._input_eps
        if source._acc is not None:
            cls, options = out._accumulator_class(source.layers, source.width)
            out._acc = source._acc.copy(cls, **options)
        return out

    def __add__(self, other: "LayerStats") -> "LayerStats":
        if not isinstance(other, LayerStats):
            return NotImplemented
        return self.merge(other)

    # -------------------------------------------------------------------- results
    def _require(self, measure: str) -> None:
        self._check_open()
        _check_measure_name(measure)
        if measure not in self._measures:
            raise StatsError(f"measure {measure!r} was not requested; this accumulator keeps "
                             f"{', '.join(self._measures)}")
        if self.count == 0:
            raise StatsError("no examples: call update() before asking for results")

    def _prepare(self, measure: str) -> tuple[ClassLayout | None, np.ndarray | None]:
        """Check ``measure`` can be computed; return where the class sums go in
        sorted class order (:class:`~audit.stats.accumulator.ClassLayout`) and, for
        ``shuffled_token_id``, the mapped id of each sorted class (float64 [k])."""
        self._require(measure)
        if not self._classed:
            return None, None
        sorted_ids, classes = self._acc.sorted_classes()
        if sorted_ids.size < 2:
            raise StatsError(_ONE_TARGET)
        mapping = None
        if measure == "shuffled_token_id":
            mapping = shuffled_ids(sorted_ids, self._seed, self._permutation)
        return classes, mapping

    def residuals(self, measure: str) -> np.ndarray:
        """The measure per layer, float64 [layers] (PR for the regressions, D for
        ``separation``).  Raises :class:`StatsError` for a measure not requested,
        an empty accumulator or a single distinct target."""
        classes, mapping = self._prepare(measure)
        acc = self._acc
        rcond = acc.rcond(self._input_eps)
        out = np.empty(acc.layers)
        work = Workspace()
        for layer in range(acc.layers):
            out[layer] = acc.value(measure, acc.total(layer, classes), rcond, mapping, work)
            if np.isnan(out[layer]):
                raise StatsError(_ONE_TARGET)
        return out

    @property
    def filled_shards(self) -> tuple[int, ...]:
        """Ids of the shards holding examples, in order: the rows of
        :meth:`leave_one_out` (empty when fewer than two shards hold examples)."""
        parts = self._filled()
        return tuple(int(p) for p in parts) if parts.size >= 2 else ()

    def _filled(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int64) if self._acc is None else np.flatnonzero(self._acc.n)

    def leave_one_out(self, measure: str) -> np.ndarray:
        """The measure with each non-empty shard left out, float64 [g, layers]
        (g = number of shards holding examples; g = 0 when fewer than two do).
        Each value comes from the total minus one shard's sums (with ``"qr"``, a
        combination of the other shards' factors), not a refit.  A left-out
        subset with a single distinct target gives NaN."""
        classes, mapping = self._prepare(measure)
        acc = self._acc
        parts = self._filled()
        if parts.size < 2:
            return np.zeros((0, acc.layers))
        rcond = acc.rcond(self._input_eps)
        out = np.empty((parts.size, acc.layers))
        work = Workspace()
        for layer in range(acc.layers):
            for j, mom in enumerate(acc.left_out(layer, classes, parts)):
                out[j, layer] = acc.value(measure, mom, rcond, mapping, work)
        return out

    def results(self, measure: str) -> "LayerResults":
        """:meth:`residuals`, :meth:`leave_one_out`, :meth:`rank` and
        :meth:`condition` in one pass over the layers, the same numbers as the
        four calls (and the same errors), each layer's total sums formed once for
        all of them instead of once per call (a layer's Gram matrices are
        shards × d² values to add)."""
        classes, mapping = self._prepare(measure)
        acc = self._acc
        parts = self._filled()
        rcond = acc.rcond(self._input_eps)
        values = np.empty(acc.layers)
        loo = np.empty((parts.size if parts.size >= 2 else 0, acc.layers))
        spectra = None
        if self._spectra_cache is None:
            spectra = (np.empty(acc.layers, dtype=np.int64), np.empty(acc.layers))
        work = Workspace()
        for layer in range(acc.layers):
            total = acc.total(layer, classes)
            values[layer] = acc.value(measure, total, rcond, mapping, work)
            if np.isnan(values[layer]):
                raise StatsError(_ONE_TARGET)
            if loo.shape[0]:
                for j, mom in enumerate(acc.left_out(layer, classes, parts, total)):
                    loo[j, layer] = acc.value(measure, mom, rcond, mapping, work)
            if spectra is not None:
                spectra[0][layer], spectra[1][layer] = self._rank_condition(
                    *acc.spectrum(layer, self._input_eps, work, total))
        if spectra is not None:
            self._spectra_cache = spectra
        ranks, conditions = self._spectra()
        return LayerResults(values, loo, ranks, conditions)

    def rank(self) -> np.ndarray:
        """Numerical rank of the centred features per layer, int64 [layers]:
        constant columns count as lost rank; of the others, scaled to unit norm,
        the singular values s above the cutoff count (``"gram"``: s² above
        ``max(d, 32) × eps × s_max²``, the scatter's own noise floor; ``"qr"``:
        s above ``max(d, 32) × eps × s_max``, as lstsq; for float32 features both
        cutoffs sit above float32's rounding noise instead, see
        :func:`audit.stats.measures.scatter_rcond`)."""
        return self._spectra()[0]

    def condition(self) -> np.ndarray:
        """Condition number κ of the centred features per layer, each non-constant
        column scaled to unit norm, float64 [layers]: s_max / s_min, ``inf`` when
        the features are rank-deficient (:meth:`rank`).  It bounds the precision:
        about κ² × 1e-16 relative for ``method="gram"``, κ × 1e-16 for ``"qr"``.
        With ``"gram"``, κ above about 1e7 cannot be told from rank deficiency."""
        return self._spectra()[1]

    def _spectra(self) -> tuple[np.ndarray, np.ndarray]:
        self._check_open()
        if self.count == 0:
            raise StatsError("no examples: call update() before asking for results")
        if self._spectra_cache is None:
            acc = self._acc
            ranks = np.empty(acc.layers, dtype=np.int64)
            conds = np.empty(acc.layers)
            work = Workspace()
            for layer in range(acc.layers):
                ranks[layer], conds[layer] = self._rank_condition(
                    *acc.spectrum(layer, self._input_eps, work))
            self._spectra_cache = (ranks, conds)
        return self._spectra_cache[0].copy(), self._spectra_cache[1].copy()

    def _rank_condition(self, sv: np.ndarray, cut: float) -> tuple[int, float]:
        """Rank and condition number from a layer's singular values ``sv``
        (descending) and the relative cutoff ``cut`` on them."""
        kept = sv > cut * sv[0] if sv.size else sv.astype(bool)
        rank = int(np.count_nonzero(kept))
        full = rank == self._acc.width  # no dead column, no lost rank
        return rank, float(sv[0] / sv[-1]) if full else np.inf

    # -------------------------------------------------------------- serialisation
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The whole state as plain numpy arrays (no object arrays), so
        ``np.savez`` / ``np.load(allow_pickle=False)`` round-trip it exactly.
        Classes are written in sorted order.  Spilled statistics are read back
        into one array here (``sxx``, shards × layers × d² float64 values: the
        memory that spilling saves), so that the arrays are the same whatever
        the storage; ``storage`` itself is not written."""
        self._check_open()
        d = {
            "measures": np.array(self._measures, dtype="<U32"),
            "shards": np.array(self._shards, dtype=np.int64),
            "shuffle_seed": np.array(self._seed, dtype=np.int64),
            "method": np.array(self._method, dtype="<U8"),
            "permutation": np.array(self._permutation, dtype="<U16"),
            "input_eps": np.array(self._input_eps),
        }
        if self._acc is None:
            d["n"] = np.zeros(self._shards, dtype=np.int64)
            return d
        d["n"] = self._acc.n.copy()
        d.update(self._acc.to_arrays())
        return d

    @classmethod
    def from_arrays(cls, arrays, storage: str = "auto",
                    spill_dir: str | os.PathLike | None = None) -> "LayerStats":
        """Rebuild an accumulator from :meth:`to_arrays` output (a dict or an
        ``np.load`` result), keeping its Gram matrices as ``storage`` and
        ``spill_dir`` say (as for the constructor).  Arrays written before
        ``method`` or ``permutation`` existed hold Gram sums and the
        ``"equilaw"`` permutation."""
        try:
            a = {k: np.asarray(arrays[k]) for k in arrays}
            method = str(a["method"]) if "method" in a else "gram"
            permutation = str(a["permutation"]) if "permutation" in a else "equilaw"
            out = cls(measures=tuple(str(m) for m in a["measures"]),
                      shards=int(a["shards"]), shuffle_seed=int(a["shuffle_seed"]),
                      method=method, permutation=permutation, storage=storage,
                      spill_dir=spill_dir)
            n = a["n"]
            if "input_eps" in a:  # older arrays: float64's
                out._input_eps = float(a["input_eps"])
            if "sx" in a:
                acc_cls, options = out._accumulator_class(*a["sx"].shape[1:])
                out._acc = acc_cls.from_arrays(
                    a, out._shards, target=out._token, classed=out._classed, **options)
            elif n.any():
                raise ValueError(f"they count {int(n.sum())} examples but hold no sums")
        except KeyError as exc:
            raise StatsError(f"statistics arrays lack the key {exc.args[0]!r}") from None
        except ValueError as exc:
            raise StatsError(f"statistics arrays are inconsistent: {exc}") from None
        return out

    def __repr__(self) -> str:
        permutation = "" if self._permutation == "equilaw" else f", permutation={self._permutation!r}"
        storage = "" if self._storage == "auto" else f", storage={self._storage!r}"
        spilled = ", spilled" if self.spilled else ""
        closed = ", closed" if self._closed else ""
        return (f"LayerStats(measures={self._measures!r}, shards={self._shards}, "
                f"method={self._method!r}{permutation}{storage}, count={self.count}, "
                f"layers={self.layers}, width={self.width}{spilled}{closed})")


@dataclass(frozen=True)
class LayerResults:
    """One measure's results for every layer (:meth:`LayerStats.results`)."""

    values: np.ndarray
    """The measure per layer, float64 [layers] (:meth:`LayerStats.residuals`)."""
    leave_one_out: np.ndarray
    """The measure with each filled shard left out, float64 [g, layers]
    (:meth:`LayerStats.leave_one_out`; g = 0 when fewer than two shards hold examples)."""
    ranks: np.ndarray
    """Numerical rank per layer, int64 [layers] (:meth:`LayerStats.rank`)."""
    conditions: np.ndarray
    """Condition number per layer, float64 [layers] (:meth:`LayerStats.condition`)."""


_ONE_TARGET = ("only one distinct target value: the target's total sum of squares "
               "(SS_tot) is zero, so PR is undefined")


def _check_measure_name(name) -> None:
    if name not in MEASURES:
        raise StatsError(f"unknown measure {name!r}; valid measures: {', '.join(MEASURES)}")
