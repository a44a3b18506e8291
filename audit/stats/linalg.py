"""Small dense solves on centred scatter matrices, for :mod:`audit.stats.layer_stats`.

The Gram side takes a centred scatter ``S`` (d×d, symmetric positive
semi-definite, float64) built from streaming sums, and a relative eigenvalue
cutoff ``rcond``: eigenvalues at or below ``rcond × λ_max`` count as zero, which
gives the minimum-norm least-squares answer, as ``numpy.linalg.lstsq`` does.

The QR side takes an upper-triangular factor ``R`` of the centred features
(``RᵀR = S``, from a streaming QR) and a relative singular-value cutoff
``rcond``: singular values of the column-scaled factor at or below
``rcond × s_max`` count as zero.  It never forms ``S``, whose condition number
is the square of the features'.  Pure numpy.
"""

from __future__ import annotations

import numpy as np


def _scaled(S: np.ndarray, live: np.ndarray,
            out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Restrict ``S`` to the live columns and scale them to unit diagonal.

    The scaling (Jacobi) makes the answer independent of per-column units, so an
    outlier dimension 1000× the others costs no precision.  Returns the scaled
    block (written into ``out`` [r, r] when given), the live indices and the
    per-column scale factors.
    """
    idx = np.flatnonzero(live)
    block = S if idx.size == S.shape[0] else S[np.ix_(idx, idx)]
    scale = 1.0 / np.sqrt(np.diag(block))
    outer = np.multiply.outer(scale, scale)
    if out is None:
        out = outer
    np.multiply(block, outer, out=out)
    return out, idx, scale


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
    r = int(np.count_nonzero(live))
    if B.shape[1] == 1:  # the scaled scatter is written straight into its place in A
        A = np.empty((r + 1, r + 1))
        St, idx, scale = _scaled(S, live, out=A[:r, :r])
    else:
        St, idx, scale = _scaled(S, live)
    Bt = B[idx] * scale[:, None] / np.sqrt(sst)
    if Bt.shape[1] == 1:
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


def scatter_singular_values(S: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Singular values of the features behind the centred scatter ``S``, live
    columns scaled to unit norm, in descending order: square roots of the scaled
    scatter's eigenvalues (negative rounding noise clipped to 0)."""
    if not live.any():
        return np.zeros(0)
    St, _, _ = _scaled(S, live)
    return np.sqrt(np.clip(np.linalg.eigvalsh(St), 0.0, None))[::-1]


def trace_pinv(W: np.ndarray, B: np.ndarray, live: np.ndarray, rcond: float) -> float:
    """tr(W · B⁺) for symmetric ``W`` and positive semi-definite ``B`` [d, d] over
    the ``live`` columns (constant columns carry neither scatter).

    B's rank is decided with the columns scaled to unit total scatter (diag of
    W + B): eigenvalues of the scaled B above ``rcond × λ_max`` count.  At full
    rank B⁺ = B⁻¹ and tr(W B⁻¹) is the same in any basis, so it is computed in
    the scaled one, where an outlier column costs no precision.  Below full rank
    B⁺ depends on the basis, and the definition is used as is: B's top-rank
    eigenpairs in the original basis.  Returns 0.0 when ``B`` is zero, as
    ``pinv(0) = 0``.
    """
    idx = np.flatnonzero(live)
    if not idx.size:
        return 0.0
    W, B = W[np.ix_(idx, idx)], B[np.ix_(idx, idx)]
    scale = 1.0 / np.sqrt(np.diag(W) + np.diag(B))
    outer = np.outer(scale, scale)
    w, U = np.linalg.eigh(B * outer)
    if w[-1] <= 0.0:
        return 0.0
    rank = int(np.count_nonzero(w > rcond * w[-1]))
    if rank == idx.size:
        W = W * outer
    else:
        w, U = np.linalg.eigh(B)
    Uk, wk = U[:, w.size - rank:], w[w.size - rank:]
    quad = np.einsum("ij,ij->j", Uk, W @ Uk)  # u_iᵀ W u_i
    return float(np.sum(quad / wk))


# ------------------------------------------------------------------ QR factors
def _scaled_factor(R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``R`` with each column scaled to unit norm (the features' columns scaled
    likewise), and the scale factors."""
    scale = 1.0 / np.sqrt(np.einsum("ij,ij->j", R, R))
    return R * scale, scale


def _factor_regular(Rs: np.ndarray, rcond: float) -> bool:
    """Whether the scaled triangular factor shows no singular value near the
    cutoff: |R_jj| bounds s_min from above (it is the part of column j not
    explained by the columns before it) and ||Rs||_F = sqrt(columns) bounds s_max,
    so a small pivot sends the solve to the SVD."""
    r = Rs.shape[1]
    pivots = np.abs(np.diag(Rs[:r]))
    return pivots.size == r and float(np.min(pivots)) > 10.0 * rcond * np.sqrt(r)


def factor_singular_values(R: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Singular values of the features behind the factor ``R`` [*, d], live
    columns scaled to unit norm, in descending order."""
    if not live.any():
        return np.zeros(0)
    Rs, _ = _scaled_factor(R[:, live])
    return np.linalg.svd(Rs, compute_uv=False)


def residual_fraction_qr(F: np.ndarray, rcond: float) -> float:
    """PR of the least-squares fit of the last column on the others, from the
    triangular factor ``F`` [r+1, r+1] of the centred [features | target].

    With F = [[R, f], [0, φ]], the residual sum of squares is φ² when R is
    regular and φ² + ||U_dropᵀ f||² in general (R = U Σ Vᵀ; U_drop: singular
    values at or below the cutoff, as lstsq's minimum-norm solution leaves them
    out), and SS_tot = φ² + ||f||²: no subtraction, no solve.
    """
    r = F.shape[1] - 1
    f, phi = F[:r, r], float(F[r, r]) if F.shape[0] > r else 0.0
    sst = phi * phi + float(f @ f)
    if r == 0:
        return 1.0
    Rs, _ = _scaled_factor(F[:r, :r])
    if _factor_regular(Rs, rcond):
        return phi * phi / sst
    U, s, _ = np.linalg.svd(Rs)
    u = U[:, s <= rcond * s[0]].T @ f
    return (phi * phi + float(u @ u)) / sst


def residual_fraction_factor(R: np.ndarray, B: np.ndarray, sst: float, rcond: float) -> float:
    """(SS_tot − Σ_j B[:, j]ᵀ S⁺ B[:, j]) / SS_tot with S = RᵀR given by its
    triangular factor ``R`` [r, r] (live columns only) and the centred
    cross-products ``B`` [r, m]: a triangular solve when ``R`` is regular, else
    the SVD of ``R`` (S⁺ = V Σ⁻² Vᵀ over the kept singular values)."""
    Rs, scale = _scaled_factor(R)
    Bt = B * scale[:, None] / np.sqrt(sst)
    if _factor_regular(Rs, rcond):
        Z = np.linalg.solve(Rs.T, Bt)
    else:
        _, s, Vt = np.linalg.svd(Rs)
        keep = s > rcond * s[0]
        Z = (Vt[keep] @ Bt) / s[keep][:, None]
    return max(1.0 - float(np.einsum("ij,ij->", Z, Z)), 0.0)


def trace_pinv_factor(R: np.ndarray, Vw: np.ndarray, live: np.ndarray, rcond: float) -> float:
    """:func:`trace_pinv` from factors, forming neither matrix: W = RᵀR − B with
    ``R`` [*, d] the factor of the centred scatter, and B = VwᵀVw with ``Vw``
    [k, d] the class-size-weighted centred class means.  B's eigenpairs are the
    squared singular values and right singular vectors of Vw (through its own
    triangular factor), so tr(W B⁺) = Σ_i ||R q_i||² / s_i² − rank(B); rank and
    basis are chosen as in :func:`trace_pinv`."""
    idx = np.flatnonzero(live)
    if not idx.size:
        return 0.0
    R, Vw = R[:, idx], Vw[:, idx]
    if Vw.shape[0] > Vw.shape[1]:
        Vw = np.linalg.qr(Vw, mode="r")  # same B, d rows instead of k
    scale = 1.0 / np.sqrt(np.einsum("ij,ij->j", R, R))
    _, s, Vt = np.linalg.svd(Vw * scale, full_matrices=False)
    if s.size == 0 or s[0] <= 0.0:
        return 0.0
    rank = int(np.count_nonzero(s * s > rcond * s[0] * s[0]))
    if rank == idx.size:
        R = R * scale
    else:
        _, s, Vt = np.linalg.svd(Vw, full_matrices=False)
    Y = R @ Vt[:rank].T
    return float(np.sum(np.einsum("ij,ij->j", Y, Y) / s[:rank] ** 2) - rank)
