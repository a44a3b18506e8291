"""The ``"gram"`` method with every shard's Gram matrices in memory: shards ×
layers × d² float64 values."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from audit.stats import measures
from audit.stats.accumulator import Accumulator
from audit.stats.measures import Moments


class GramAccumulator(Accumulator):
    """``method="gram"``: Gram matrices Σ(x−a)(x−a)ᵀ [g, layers, d, d] (and
    Σ(x−a)(y−c) [g, layers, d] for token_id), one symmetric rank-n update per
    batch and layer (BLAS dsyrk: d² multiply-adds per token and layer, the cost
    that matters).  Sums subtract, so a left-out shard is the total minus its
    sums.  Solves scale columns to unit variance and use a Cholesky
    factorisation, falling back to the minimum-norm least-squares solution
    (eigendecomposition, relative eigenvalue cutoff
    :func:`~audit.stats.measures.scatter_rcond`) when the scatter is singular; a Gram
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

    def _left_out_scatters(self, layer: int, parts: np.ndarray,
                           total: Moments | None = None) -> Iterator[dict]:
        sxx, sxy = self._sums(layer) if total is None else (total.sxx, total.sxy)
        left = np.empty_like(sxx)  # one d×d array for every left-out shard
        for i in parts:
            scatter = {"sxx": np.subtract(sxx, self.sxx[i, layer], out=left)}
            if self.target:
                scatter["sxy"] = sxy - self.sxy[i, layer]
            yield scatter
