"""The measures of a layer, as pure numpy functions of its moments.

:class:`Moments` holds the shifted sums of one layer over a set of shards (all
of them, or all but one for the jackknife), in either of the two forms an
accumulator keeps (:mod:`audit.stats.accumulator`): a scatter (``"gram"``) or a
triangular QR factor (``"qr"``).  From them:

* :func:`scatter_value` / :func:`factor_value`: one measure of :data:`MEASURES`
  (docs/method.md defines them; :mod:`audit.stats.layer_stats` summarises them);
* :func:`scatter_spectrum` / :func:`factor_spectrum`: the singular values
  behind :meth:`audit.stats.layer_stats.LayerStats.rank` and ``condition``;
* :func:`scatter_rcond` / :func:`factor_rcond`: the relative rank cutoffs;
* :data:`SCATTER` / :data:`FACTOR`: those three for one form of the moments
  (:class:`Formulas`), which is all an accumulator needs;
* :func:`shuffled_ids`: the permuted ids of ``shuffled_token_id``;
* :func:`log10_or_nan`: log10 of measure values, NaN where undefined.

The dense solves themselves are in :mod:`audit.stats.linalg`.  Every sum is in
float64, whatever the features' dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from audit.stats import linalg

MEASURES = ("token_id", "shuffled_token_id", "one_hot", "separation")
"""Every measure, in canonical order: the one list of the project."""
CLASS_MEASURES = frozenset(("shuffled_token_id", "one_hot", "separation"))
"""The measures computed from per-class sums."""
PERMUTATIONS = ("equilaw", "reference")
"""How ``shuffled_token_id`` permutes the ids: see :func:`shuffled_ids`."""

EPS = float(np.finfo(np.float64).eps)
"""Every sum is formed and kept in float64, whatever the features' dtype."""
# A column is dead (constant) when centring removes all but this many units of
# its precision from its shifted sum of squares.
_DEAD_COLUMN_EPS = 1e3
_ROUNDING_MARGIN = 10.0
"""How far above the features' own rounding noise the rank cutoff sits (see
:func:`scatter_rcond`)."""


@dataclass
class Moments:
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

    def centred(self, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean offset m = Σ(x−a)/n [d], centred scatter S [d, d] (written into
        ``out`` when given), and the shifted sum of squares diagonal [d] (for the
        dead-column test)."""
        m = self.sx / self.n
        r = m * np.sqrt(self.n)
        S = np.multiply.outer(r, r, out=out)  # r_i·r_j keeps S exactly symmetric
        np.subtract(self.sxx, S, out=S)  # one d×d array, not two
        return m, S, np.diag(self.sxx)

    def centred_factor(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For ``method="qr"``: mean offset m [d], the factor F = r[1:, 1:] of the
        centred columns (FᵀF = centred scatter of [x | y]), the centred sums of
        squares of the features [d] and their shifted (raw) ones [d]."""
        d = self.sx.size
        m = self.sx / self.n
        F = self.r[1:, 1:]
        return m, F, _col_sq(F[:, :d]), _col_sq(self.r[:, 1:d + 1])


# ------------------------------------------------------------------ cutoffs
def scatter_rcond(width: int, input_eps: float) -> float:
    """The relative rank cutoff on eigenvalues of the scaled scatter (``gram``);
    :func:`factor_rcond` is the same on singular values of the scaled factor
    (``qr``).  ``width``: d; ``input_eps``: machine epsilon of the coarsest
    features seen.

    For float64 features it is float64's own floor, max(d, 32) × eps, which is
    lstsq's answer.  Float32 features carry rounding noise of relative size
    about eps32 in every direction, also in directions that are exactly empty in
    exact arithmetic (the mean direction after a LayerNorm), where float64's
    cutoff would count or drop it depending on who rounded.  For float32 features
    the cutoff is therefore ``_ROUNDING_MARGIN`` × max(d, 32) × eps32² on
    eigenvalues (the square root on singular values): above that noise, below
    any real layer's spread (README.md, "Precision and limits")."""
    d = max(width, 32)
    return max(d * EPS, _ROUNDING_MARGIN * d * input_eps ** 2)


def factor_rcond(width: int, input_eps: float) -> float:
    """:func:`scatter_rcond` on singular values of the scaled factor (``qr``)."""
    d = max(width, 32)
    return max(d * EPS, np.sqrt(_ROUNDING_MARGIN * d) * input_eps)


def _live(diag: np.ndarray, raw_diag: np.ndarray) -> np.ndarray:
    """Columns that are not constant: centring leaves more than rounding noise of
    their shifted sums of squares ``raw_diag`` in their centred ones ``diag``."""
    return diag > _DEAD_COLUMN_EPS * EPS * raw_diag


def _col_sq(A: np.ndarray) -> np.ndarray:
    """Squared Euclidean norm of each column of ``A``."""
    return np.einsum("ij,ij->j", A, A)


# ----------------------------------------------------------------- spectra
def scatter_spectrum(mom: Moments, rcond: float,
                     work: linalg.Workspace | None = None) -> tuple[np.ndarray, float]:
    """Singular values of the centred features behind a scatter, non-constant
    columns scaled to unit norm, descending [rank ≤ d], and the relative cutoff
    above which they count as rank: ``rcond`` (:func:`scatter_rcond`) is on
    eigenvalues of the scatter, so its square root on singular values.
    ``work``: scratch arrays to reuse (:class:`~audit.stats.linalg.Workspace`)."""
    _, S, raw = mom.centred(_scratch(work, mom))
    return (linalg.scatter_singular_values(S, _live(np.diag(S), raw), work),
            float(np.sqrt(rcond)))


def _scratch(work: linalg.Workspace | None, mom: Moments) -> np.ndarray | None:
    """Where :meth:`Moments.centred` may write S: the workspace's, if any."""
    return None if work is None else work.get("centred", mom.sxx.shape)


def factor_spectrum(mom: Moments, rcond: float,
                    work: linalg.Workspace | None = None) -> tuple[np.ndarray, float]:
    """:func:`scatter_spectrum` from a QR factor: ``rcond`` (:func:`factor_rcond`)
    is on singular values already; ``work`` is not used."""
    _, F, diag, raw = mom.centred_factor()
    d = mom.sx.size
    return linalg.factor_singular_values(F[:d, :d], _live(diag, raw)), rcond


# ------------------------------------------------------------------ values
def shuffled_ids(sorted_ids: np.ndarray, seed: int, permutation: str) -> np.ndarray:
    """The id that ``shuffled_token_id`` gives each sorted distinct id, float64 [k].

    ``"equilaw"``: sorted id i maps to ``sorted_ids[perm[i]]`` with
    ``perm = numpy.random.default_rng(seed).permutation(k)``.
    ``"reference"``: the construction of the authors' code (HornHehhf/LLM-ELL):
    ``mapping = dict(zip(unique_labels, RandomState(seed).permutation(unique_labels)))``,
    sorted id i maps to ``RandomState(seed).permutation(sorted_ids)[i]``.  (Their
    script draws from numpy's global generator after earlier draws, so its
    permutation also depends on what ran before; this one starts from ``seed``.)
    """
    if permutation == "reference":
        return np.random.RandomState(seed).permutation(sorted_ids).astype(np.float64)
    perm = np.random.default_rng(seed).permutation(sorted_ids.size)
    return sorted_ids[perm].astype(np.float64)


def scatter_value(measure: str, mom: Moments, rcond: float, mapping: np.ndarray | None,
                  work: linalg.Workspace | None = None) -> float:
    """One layer's measure from its moments with a scatter (``gram``); NaN when
    undefined (fewer than two examples or a single distinct target).
    ``rcond``: :func:`scatter_rcond`; ``mapping``: :func:`shuffled_ids` for
    ``shuffled_token_id``, else None; ``work``: scratch arrays to reuse
    (:class:`~audit.stats.linalg.Workspace`)."""
    n = mom.n
    if n < 2:
        return float("nan")
    m, S, raw = mom.centred(_scratch(work, mom))
    live = _live(np.diag(S), raw)
    if measure == "token_id":
        if not mom.distinct:
            return float("nan")
        ybar = mom.sy / n
        sst = mom.syy - mom.sy * ybar
        sxy = mom.sxy - mom.sx * ybar
        return linalg.residual_fraction(S, sxy[:, None], sst, live, rcond, work)
    V, targets = _class_targets(measure, mom, m, mapping)
    if V is None:
        return float("nan")
    if measure == "separation":
        # D = tr(SS_w SS_b⁺) = tr(W B⁺) (the 1/n factors cancel); V is weighted here
        B = V.T @ V  # Σ_c n_c (μ_c − μ)(μ_c − μ)ᵀ
        return linalg.trace_pinv(S - B, B, live, rcond)
    B, sst = targets
    return linalg.residual_fraction(S, B, sst, live, rcond, work)


def factor_value(measure: str, mom: Moments, rcond: float, mapping: np.ndarray | None,
                 work: linalg.Workspace | None = None) -> float:
    """:func:`scatter_value` from a QR factor (``qr``; ``rcond``:
    :func:`factor_rcond`): the same quantities, computed without forming the
    scatter (whose condition number is κ²); ``work`` is not used."""
    if mom.n < 2:
        return float("nan")
    m, F, diag, raw = mom.centred_factor()
    d = m.size
    live = _live(diag, raw)
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


def _class_targets(measure: str, mom: Moments, m: np.ndarray, mapping: np.ndarray | None):
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


@dataclass(frozen=True)
class Formulas:
    """The formulas for one form of the moments (scatter or QR factor)."""

    rcond: Callable[[int, float], float]
    """(width, input_eps) → the relative rank cutoff of the solves."""
    value: Callable[..., float]
    """(measure, moments, rcond, mapping, work) → the measure, NaN when undefined
    (``work``: a :class:`~audit.stats.linalg.Workspace` or None)."""
    spectrum: Callable[..., tuple[np.ndarray, float]]
    """(moments, rcond, work) → singular values and the relative cutoff on them."""


SCATTER = Formulas(scatter_rcond, scatter_value, scatter_spectrum)
"""For moments with ``sxx`` and ``sxy`` (``method="gram"``)."""
FACTOR = Formulas(factor_rcond, factor_value, factor_spectrum)
"""For moments with a QR factor ``r`` (``method="qr"``)."""


def log10_or_nan(values) -> np.ndarray:
    """log10 of PR values (any shape), NaN where PR is 0, negative, infinite or NaN:
    such a PR has no meaningful log, and NaN (not -inf) makes everything downstream
    say "undefined" the same way.  The law fit and the reports' per-shard values
    both use it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(np.asarray(values, dtype=np.float64))
    out[~np.isfinite(out)] = np.nan
    return out
