"""Small dense solves on centred scatter matrices, for :mod:`audit.stats.layer_stats`.

The Gram side takes a centred scatter ``S`` (d×d, symmetric positive
semi-definite, float64) built from streaming sums, and a relative eigenvalue
cutoff ``rcond``: eigenvalues at or below ``rcond × λ_max`` count as zero, which
gives the minimum-norm least-squares answer, as ``numpy.linalg.lstsq`` does.

The QR side takes an upper-triangular factor ``R`` of the centred features
(``RᵀR = S``, from a streaming QR) and a relative singular-value cutoff
``rcond``: singular values of the column-scaled factor at or below
``rcond × s_max`` count as zero.  It never forms ``S``, whose condition number
is the square of the features'.  Numpy, and LAPACK's dpotrf and dtrtrs through
SciPy (imported when first needed) where numpy's Cholesky would copy; a
:class:`Workspace` keeps the d×d temporaries from solve to solve.
"""

from __future__ import annotations

import math

import numpy as np


class Workspace:
    """Float64 scratch arrays kept by name and reused across calls: a results call
    (one measure over every layer, or every left-out shard of every layer) makes
    its d×d temporaries once instead of once per solve, where a fresh array of
    that size costs its page faults and a pass of zeros each time.  An array from
    :meth:`get` is valid until the next :meth:`get` of the same name."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous float64 array of ``shape`` (contents undefined)."""
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self._buffers[name] = np.empty(size)
        return buf[:size].reshape(shape)


def _array(work: Workspace | None, name: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape) if work is None else work.get(name, shape)


def _scaled(S: np.ndarray, live: np.ndarray, out: np.ndarray | None = None,
            work: Workspace | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Restrict ``S`` to the live columns and scale them to unit diagonal.

    The scaling (Jacobi) makes the answer independent of per-column units, so an
    outlier dimension 1000× the others costs no precision.  Returns the scaled
    block (written into ``out`` [r, r] when given), the live indices and the
    per-column scale factors.
    """
    idx = np.flatnonzero(live)
    block = S if idx.size == S.shape[0] else S[np.ix_(idx, idx)]
    scale = 1.0 / np.sqrt(np.diag(block))
    outer = np.multiply.outer(scale, scale, out=_array(work, "outer", (idx.size, idx.size)))
    if out is None:
        out = outer
    np.multiply(block, outer, out=out)
    return out, idx, scale


def _cholesky(A: np.ndarray) -> tuple[np.ndarray, bool]:
    """Cholesky factorisation of the symmetric ``A`` [n, n] (C-contiguous) in
    place, by LAPACK's dpotrf through SciPy (numpy's ``linalg.cholesky`` copies
    in and out and zeroes a triangle, several times slower at d ≈ 600).  Returns
    a view F of A's memory and whether A is positive definite.  F's lower
    triangle holds the factor L (the numbers of ``numpy.linalg.cholesky(A)``:
    the same LAPACK call on the same numbers, A.T being Fortran-ordered A); its
    strict upper triangle still holds A's, so :func:`_restore` gets A back."""
    from scipy.linalg import lapack  # SciPy loads only when results are asked for

    F, info = lapack.dpotrf(A.T, lower=1, overwrite_a=1, clean=0)
    return F, info == 0


def _restore(F: np.ndarray, diag: np.ndarray) -> np.ndarray:
    """The symmetric matrix that :func:`_cholesky` overwrote with F, from the
    strict upper triangle it left and the matrix's diagonal ``diag``: bit for bit
    the original, which was exactly symmetric."""
    upper = np.triu(F, 1)
    out = upper + upper.T
    out[np.diag_indices_from(out)] = diag
    return out


def _clearly_regular(L: np.ndarray, norm: float, rcond: float) -> bool:
    """Whether the Cholesky factor ``L`` of a scaled scatter St shows no
    eigenvalue near the cutoff (``norm`` = ||St||_F).  A pivot L_jj² is the part
    of column j not explained by the columns before it, an upper bound on
    λ_min, so a tiny pivot means (near) rank deficiency; ||St||_F bounds λ_max
    from above, so the test errs towards the eigendecomposition."""
    return float(np.min(np.diag(L))) ** 2 > 10.0 * rcond * norm


def _frobenius(A: np.ndarray) -> float:
    return float(np.sqrt(np.einsum("ij,ij->", A, A)))


def residual_fraction(S: np.ndarray, B: np.ndarray, sst: float, live: np.ndarray,
                      rcond: float, work: Workspace | None = None) -> float:
    """(SS_tot − Σ_j B[:, j]ᵀ S⁺ B[:, j]) / SS_tot: the PR of a least-squares fit.

    ``S`` [d, d] is the centred feature scatter, ``B`` [d, m] the centred
    feature/target cross-products (one column per output), ``sst`` the targets'
    total sum of squares, ``live`` [d] bool marks the columns that are not
    constant (dead columns carry no information and are dropped, as lstsq's
    minimum-norm solution does).  With one output, a Cholesky factorisation of
    the scaled augmented matrix [[S, b], [bᵀ, SS_tot]] gives PR as its last pivot
    squared; with several, a Cholesky solve.  When the pivots show the scatter is
    (near) singular, an eigendecomposition gives the minimum-norm answer.
    ``work``: scratch arrays to reuse (:class:`Workspace`); ``S`` is not written.
    """
    if not live.any():
        return 1.0
    r = int(np.count_nonzero(live))
    one = B.shape[1] == 1
    # the scaled scatter is written straight into its place in A (one output)
    A = _array(work, "augmented" if one else "scaled", (r + 1, r + 1) if one else (r, r))
    St, idx, scale = _scaled(S, live, out=A[:r, :r], work=work)
    Bt = B[idx] * scale[:, None] / np.sqrt(sst)
    diag, norm = np.diag(St).copy(), _frobenius(St)
    if one:
        A[:r, r] = A[r, :r] = Bt[:, 0]
        A[r, r] = 1.0
        F, ok = _cholesky(A)
        if ok and _clearly_regular(F[:r, :r], norm, rcond):
            return float(F[r, r]) ** 2
        # singular scatter, or a perfect fit: decide below
        St = _restore(F, np.append(diag, 1.0))[:r, :r]
    else:
        F, ok = _cholesky(St)
        if ok and _clearly_regular(F, norm, rcond):
            from scipy.linalg import lapack

            Z, info = lapack.dtrtrs(F, Bt, lower=1)  # L Z = Bt
            if info == 0:
                return max(1.0 - float(np.einsum("ij,ij->", Z, Z)), 0.0)
        St = _restore(F, diag)
    w, U = np.linalg.eigh(St)
    keep = w > rcond * w[-1]
    P = U[:, keep].T @ Bt  # [rank, m]
    # Rounding can push the explained part a hair past SS_tot on a perfect fit.
    return max(1.0 - float(np.sum(P * P / w[keep][:, None])), 0.0)


def scatter_singular_values(S: np.ndarray, live: np.ndarray,
                            work: Workspace | None = None) -> np.ndarray:
    """Singular values of the features behind the centred scatter ``S``, live
    columns scaled to unit norm, in descending order: square roots of the scaled
    scatter's eigenvalues (negative rounding noise clipped to 0)."""
    if not live.any():
        return np.zeros(0)
    St, _, _ = _scaled(S, live, work=work)
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
