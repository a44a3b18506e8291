"""The ``"qr"`` method: streaming triangular QR factors, every shard in memory
(shards × layers × (d+2)² float64 values)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from audit.stats import measures
from audit.stats.accumulator import Accumulator
from audit.stats.measures import Moments


class QRAccumulator(Accumulator):
    """``method="qr"``: triangular QR factors ``r`` [g, layers, p, p] of
    [1 | x−a | y−c] (p = d+1, plus 1 with token_id's target column; ones first,
    so that the trailing block is the factor of the centred columns), updated per
    batch by a Householder QR of the factor stacked on the batch (slower than the
    Gram update: README.md, "Performance"), combined across shards and
    accumulators by stacking factors.  Factors cannot be subtracted: leave-one-out factors come from
    prefix and suffix combinations (3 small factorisations per shard and layer).
    Never forming the scatter, PR matches lstsq to about κ × 1e-16; rank cutoff
    :func:`~audit.stats.measures.factor_rcond` on singular values, as lstsq's."""

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

    def _left_out_scatters(self, layer: int, parts: np.ndarray,
                           total: Moments | None = None) -> Iterator[dict]:
        # prefix and suffix combinations need every factor of the layer at once
        for factor in _leave_one_out_factors([self.r[i, layer] for i in parts]):
            yield {"r": factor}


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
