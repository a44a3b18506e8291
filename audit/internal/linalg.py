"""Small dense solves on centred scatter matrices, for :mod:`audit.stats`.

Everything here takes a centred scatter ``S`` (d×d, symmetric positive
semi-definite, float64) built from streaming sums, and a relative eigenvalue
cutoff ``rcond``: eigenvalues at or below ``rcond × λ_max`` count as zero, which
gives the minimum-norm least-squares answer, as ``numpy.linalg.lstsq`` does.
Pure numpy.
"""

from __future__ import annotations

import numpy as np


def _scaled(S: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Restrict ``S`` to the live columns and scale them to unit diagonal.

    The scaling (Jacobi) makes the answer independent of per-column units, so an
    outlier dimension 1000× the others costs no precision.  Returns the scaled
    block, the live indices and the per-column scale factors.
    """
    idx = np.flatnonzero(live)
    block = S if idx.size == S.shape[0] else S[np.ix_(idx, idx)]
    scale = 1.0 / np.sqrt(np.diag(block))
    return block * np.outer(scale, scale), idx, scale


def _clearly_regular(L: np.ndarray, St: np.ndarray, rcond: float) -> bool:
    """Whether the Cholesky factor ``L`` of ``St`` shows no eigenvalue near the
    cutoff.  A pivot L_jj² is the part of column j not explained by the columns
    before it, an upper bound on λ_min, so a tiny pivot means (near) rank
    deficiency; ||St||_F bounds λ_max from above, so the test errs towards the
    eigendecomposition."""
    return float(np.min(np.diag(L))) ** 2 > 10.0 * rcond * float(np.linalg.norm(St))


def residual_fraction(S: np.ndarray, B: np.ndarray, sst: float, live: np.ndarray,
                      rcond: float) -> float:
    """(SS_tot − Σ_j B[:, j]ᵀ S⁺ B[:, j]) / SS_tot: the PR of a least-squares fit.

    ``S`` [d, d] is the centred feature scatter, ``B`` [d, m] the centred
    feature/target cross-products (one column per output), ``sst`` the targets'
    total sum of squares, ``live`` [d] bool marks the columns that are not
    constant (dead columns carry no information and are dropped, as lstsq's
    minimum-norm solution does).  With one output, a Cholesky factorisation of
    the scaled augmented matrix [[S, b], [bᵀ, SS_tot]] gives PR as its last pivot
    squared; with several, a Cholesky solve.  When the pivots show the scatter is
    (near) singular, an eigendecomposition gives the minimum-norm answer.
    """
    if not live.any():
        return 1.0
    St, idx, scale = _scaled(S, live)
    Bt = B[idx] * scale[:, None] / np.sqrt(sst)
    r = idx.size
    if Bt.shape[1] == 1:
        A = np.empty((r + 1, r + 1))
        A[:r, :r] = St
        A[:r, r] = A[r, :r] = Bt[:, 0]
        A[r, r] = 1.0
        try:
            L = np.linalg.cholesky(A)
            if _clearly_regular(L[:r, :r], St, rcond):
                return float(L[r, r]) ** 2
        except np.linalg.LinAlgError:
            pass  # singular scatter, or a perfect fit: decide below
    else:
        try:
            L = np.linalg.cholesky(St)
            if _clearly_regular(L, St, rcond):
                Z = np.linalg.solve(L, Bt)
                return max(1.0 - float(np.einsum("ij,ij->", Z, Z)), 0.0)
        except np.linalg.LinAlgError:
            pass
    w, U = np.linalg.eigh(St)
    keep = w > rcond * w[-1]
    P = U[:, keep].T @ Bt  # [rank, m]
    # Rounding can push the explained part a hair past SS_tot on a perfect fit.
    return max(1.0 - float(np.sum(P * P / w[keep][:, None])), 0.0)


def rank(S: np.ndarray, live: np.ndarray, rcond: float) -> int:
    """Numerical rank of the centred scatter ``S`` restricted to the live columns,
    counting scaled eigenvalues above ``rcond × λ_max``."""
    if not live.any():
        return 0
    St, _, _ = _scaled(S, live)
    w = np.linalg.eigvalsh(St)
    return int(np.count_nonzero(w > rcond * w[-1]))


def trace_pinv(W: np.ndarray, B: np.ndarray, rcond: float) -> float:
    """tr(W · B⁺) for symmetric ``W`` and positive semi-definite ``B`` [d, d].

    The pseudo-inverse keeps eigenvalues of ``B`` above ``rcond × λ_max`` (no
    column scaling: B⁺ is not scale-invariant, so the definition is used as is).
    Returns 0.0 when ``B`` is zero, as ``pinv(0) = 0``.
    """
    w, U = np.linalg.eigh(B)
    if w[-1] <= 0.0:
        return 0.0
    keep = w > rcond * w[-1]
    Uk = U[:, keep]
    quad = np.einsum("ij,ij->j", Uk, W @ Uk)  # u_iᵀ W u_i
    return float(np.sum(quad / w[keep]))
