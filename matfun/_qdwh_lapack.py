"""QDWH on one CPU matrix through LAPACK's structured kernels (the CPU fast path of :mod:`matfun.qdwh`).

The batched torch iteration in :mod:`matfun.qdwh` spends most of its time in general
kernels that ignore structure.  On the CPU, one matrix at a time, this module runs
the same iteration with the kernels that fit each step:

1. ``A = Q_A R`` (Householder, ``geqrf``).  QDWH is then run on the ``n × n``
   matrix ``R``, since ``polar(A) = Q_A polar(R)``; the last step applies ``Q_A``
   (``ormqr``).  The estimates of ``α ≥ ‖A‖₂`` and ``ℓ₀ ≈ σ_min`` come from ``R``
   for free.
2. QR-based steps factor ``[√c R_k; I] = [W₁; W₂] R'`` with ``tpqrt``, LAPACK's QR of a
   triangle stacked on a triangle (about ``⅔n³`` flops instead of ``10/3·n³``), form
   ``[W₁; W₂]`` with ``tpmqrt``, and multiply ``W₁W₂ᵀ`` with ``trmm`` (``W₂`` is upper
   triangular).  The first step's ``R_k`` is ``R`` itself; a later one is the R factor
   of the current iterate ``X_k = Q_k R_k`` and its product is ``Q_k W₁W₂ᵀ``.
3. Cholesky-based steps form ``P = XᵀX`` with ``syrk`` (half a product), then
   ``Z = I + cP = LLᵀ`` (``potrf``) and ``X Z⁻¹`` (``potrs``).
4. The last step is a Newton–Schulz polish ``X ← X(I − E/2 + 3E²/8 − …)``,
   ``E = XᵀX − I``, with the number of terms chosen by
   :meth:`matfun.qdwh._Plan.polish_terms` from the ``P`` the step computes anyway
   (``symm``; the powers of ``E`` in float32).

Arrays are kept as the Fortran-ordered transpose ``Xᵀ`` of the C-ordered iterate,
so no BLAS call copies an operand to change its layout.  Measured by ``python -m
benchmarks.bench_polar`` (see :data:`MIN_SIZE`).

References
----------
Y. Nakatsukasa, N. J. Higham, *Stable and efficient spectral divide and conquer
algorithms for the symmetric eigenvalue decomposition and the SVD*, SIAM J. Sci.
Comput. 35(3), 2013 (QR-based steps on ``[√c X; I]``, the QR/Cholesky switch).
LAPACK 3.4 ``xTPQRT``/``xTPMQRT`` (triangular-pentagonal QR, Demmel, Grigori,
Hoemmen, Langou 2012 for the block-reflector form).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.linalg import blas, lapack

from ._symmetric import fill_lower_from_upper
from .qdwh import POLISH_TAYLOR, _extremes_of_r, _Plan, _StepCounts

#: smallest ``n = min(H, W)`` for which :mod:`matfun.qdwh` uses this path on the CPU.
#: Measured by ``python -m benchmarks.bench_polar`` (its path comparison) on the
#: 2-core machine (float64, single matrices, 9 interleaved runs, median time of this
#: path over the batched torch iteration), two runs: 1.03 at 128², 0.84 and 1.18 at
#: 256², 0.48 and 0.66 at 384², 0.52 and 0.60 at 512², 0.76 and 0.80 at 768²; 0.70 at
#: 2048².  Small matrices lose to per-call overheads, among them MKL's (torch) and
#: OpenBLAS's (scipy) thread pools waiting on each other.
MIN_SIZE = 384

#: block size of ``tpqrt`` (32 and 64 measured within 10% of each other at 2048²).
_BLOCK = 32


def applies(A: torch.Tensor) -> bool:
    """Whether the tall batch ``A`` (``(B, m, n)``) runs here rather than in batched torch."""
    return (
        A.device.type == "cpu"
        and A.dtype in (torch.float32, torch.float64)
        and A.shape[-1] >= MIN_SIZE
        and not A.requires_grad
    )


class _Kernels:
    """The BLAS/LAPACK routines of one dtype (``d…`` or ``s…``)."""

    tpqrt: Callable[..., Any]
    tpmqrt: Callable[..., Any]
    potrf: Callable[..., Any]
    potrs: Callable[..., Any]
    syrk: Callable[..., Any]
    symm: Callable[..., Any]
    trmm: Callable[..., Any]
    axpy: Callable[..., Any]

    def __init__(self, dtype: np.dtype) -> None:
        p = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}[np.dtype(dtype)]
        for name in ("tpqrt", "tpmqrt", "potrf", "potrs"):
            setattr(self, name, getattr(lapack, p + name))
        for name in ("syrk", "symm", "trmm", "axpy"):
            setattr(self, name, getattr(blas, p + name))


def qdwh_matrix(A: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor | None, _StepCounts]:
    """QDWH on one tall CPU matrix ``A`` (``m ≥ n``, float32/float64, entries at most 1 in size).

    Parameters
    ----------
    A : torch.Tensor of shape (m, n)
    plan : matfun.qdwh._Plan
        Step choice and stopping rule shared with the batched iteration.

    Returns
    -------
    (U or None, counts)
        ``None`` when the matrix is zero, numerically rank-deficient or did not
        converge (the caller computes it by the SVD); ``counts`` has the keys
        ``qr``, ``cholesky``, ``polish`` and ``lower_bound``.
    """
    m, n = A.shape
    counts: _StepCounts = {"qr": 0, "cholesky": 0, "polish": 0, "lower_bound": math.nan}
    qr, tau = torch.geqrf(A)
    R = qr[:n].triu()
    alpha = min(float(torch.linalg.matrix_norm(R)), math.sqrt(float(R.abs().sum(-2).amax() * R.abs().sum(-1).amax())))
    if not alpha > 0:
        return None, counts
    R /= alpha
    smallest, largest = _extremes_of_r(R[None])
    if not bool(plan.full_rank(smallest, largest)):
        return None, counts
    tighter = float(plan.scale(largest))
    R /= tighter
    sigma_min = float(smallest) / tighter
    ell = counts["lower_bound"] = min(sigma_min, 1.0)
    w = _Workspace(R.numpy().T)  # Fortran-ordered Xᵀ (R is ours: no copy); X = R is upper triangular
    triangular = True
    while counts["qr"] + counts["cholesky"] + counts["polish"] < plan.max_iter:
        a, b, c = plan.weights(ell)
        if plan.use_qr(c):
            _qr_step(w, triangular, a, b, c)
            counts["qr"] += 1
        else:
            E = w.gram_minus_identity()
            terms = plan.polish_terms(ell, _norm_bound_upper(E), n, n)  # E is the n × n iterate's: √n·eps noise
            if terms:
                _polish(w, E, terms)
                counts["polish"] += 1
                X = torch.from_numpy(w.Xt).mT  # column-major, as ormqr wants it
                return torch.ormqr(qr, tau, X if m == n else torch.cat([X, X.new_zeros(m - n, n)])), counts
            if not _cholesky_step(w, E, a, b, c):
                return None, counts
            counts["cholesky"] += 1
        triangular = False
        ell = plan.next_bound(ell, a, b, c)
    return None, counts


class _Workspace:
    """The iterate ``Xt = Xᵀ`` and ``n × n`` Fortran buffers reused across steps.

    Fresh 32 MiB arrays (2048² float64) cost page faults on first touch, at times as
    much as a BLAS-1 pass; reusing three buffers (four once a QR step has run) keeps
    every step free of allocations.
    """

    def __init__(self, Xt: np.ndarray):
        self.k = _Kernels(Xt.dtype)
        self.Xt = np.asfortranarray(Xt)  # (a C-ordered one would make every BLAS call copy it)
        self.spare = np.empty_like(self.Xt, order="F")
        self.gram = np.zeros_like(self.Xt, order="F")  # its lower triangle stays finite
        self._extra: np.ndarray | None = None

    @property
    def extra(self) -> np.ndarray:
        if self._extra is None:
            self._extra = np.empty_like(self.Xt, order="F")
        return self._extra

    def swap(self) -> None:
        """The new iterate, computed in ``spare``, becomes ``Xt``."""
        self.Xt, self.spare = self.spare, self.Xt

    def gram_minus_identity(self) -> np.ndarray:
        """``E = XᵀX − I`` in the upper triangle of ``gram`` (the lower one is not referenced), by ``syrk``."""
        E = self.k.syrk(1.0, self.Xt, trans=0, lower=0, beta=0.0, c=self.gram, overwrite_c=1)
        E[np.diag_indices(E.shape[0])] -= 1.0
        return E


def _polish(w: _Workspace, E: np.ndarray, terms: int) -> None:
    """Newton–Schulz polish ``X ← X(I + C)``, ``C = Σ_{j=1..terms} t_j E^j``, ``E = XᵀX − I``.

    Computed as ``Xᵀ ← Xᵀ + C Xᵀ`` by ``symm``.  The powers ``E^j`` (``j ≥ 2``, entries
    at most ``e² ≤ 2e-8``) are formed in float32: their rounding changes the symmetric
    ``S = I + C`` by ``O(eps)``, which moves the result's orthogonality by ``O(eps)`` and
    its polar factor by only ``O(e·eps)`` (``S`` nearly commutes with ``XᵀX ≈ I``).
    """
    powers = []
    if terms > 1:
        E32 = fill_lower_from_upper(E).astype(np.float32, order="F")
        powers.append(blas.ssyrk(1.0, E32, trans=0, lower=0))  # E², upper triangle
        if terms > 2:
            powers.append(blas.ssymm(1.0, powers[0], E32, side=0, lower=0))  # E³
    C = E
    C *= POLISH_TAYLOR[1]
    for j, power in enumerate(powers, start=2):
        C += POLISH_TAYLOR[j] * power
    w.spare[...] = w.Xt
    w.Xt = w.k.symm(1.0, C, w.spare, side=0, lower=0, beta=1.0, c=w.Xt, overwrite_c=1)  # in place when it can


def _cholesky_step(w: _Workspace, E: np.ndarray, a: float, b: float, c: float) -> bool:
    """``X ← (b/c)X + (a − b/c) X Z⁻¹`` with ``Z = I + cXᵀX = c E + (1 + c) I``; False if ``Z`` fails Cholesky."""
    n = E.shape[0]
    E *= c
    E[np.diag_indices(n)] += 1.0 + c
    L, info = w.k.potrf(E, lower=0, overwrite_a=1, clean=0)
    if info != 0:  # cannot happen for Z ⪰ I; the caller hands the matrix to the SVD if it does
        return False
    w.spare[...] = w.Xt
    Yt, _ = w.k.potrs(L, w.spare, lower=0, overwrite_b=1)  # Z⁻¹Xᵀ = (X Z⁻¹)ᵀ, in spare
    Yt *= a - b / c
    w.spare = w.k.axpy(w.Xt.ravel("F"), Yt.ravel("F"), a=b / c).reshape(Yt.shape, order="F")  # in place when it can
    w.swap()
    return True


def _qr_step(w: _Workspace, triangular: bool, a: float, b: float, c: float) -> None:
    """QR-based step ``X ← (b/c)X + (a − b/c)/√c · Q₁Q₂ᵀ`` with ``[√c X; I] = [Q₁; Q₂] R'``.

    ``X = Q_k R_k`` (``Q_k = I`` while ``X`` is the triangle ``R``), ``[√c R_k; I] =
    [W₁; W₂] R'`` by ``tpqrt``, so ``Q₁Q₂ᵀ = Q_k W₁W₂ᵀ``.
    """
    n = w.Xt.shape[0]
    root = math.sqrt(c)
    top, lower = w.gram, w.spare
    if triangular:
        np.multiply(w.Xt.T, root, out=top)
    else:
        qr, tau = torch.geqrf(torch.from_numpy(w.Xt).mT)
        np.multiply(np.triu(qr.numpy()), root, out=top)
    _identity(lower)
    _, V, T, _ = w.k.tpqrt(n, min(_BLOCK, n), top, lower, overwrite_a=1, overwrite_b=1)
    W1, W2 = _identity(top), w.extra
    W2.fill(0.0)
    W1, W2, _ = w.k.tpmqrt(n, V, T, W1, W2, overwrite_a=1, overwrite_b=1)  # [W₁; W₂] = Q'[I; 0]
    M = w.k.trmm(1.0, W2, W1, side=1, lower=0, trans_a=1, overwrite_b=1)  # W₁W₂ᵀ (W₂ upper triangular)
    if not triangular:
        M = torch.ormqr(qr, tau, torch.from_numpy(M).mT.mT).numpy()  # Q_k W₁W₂ᵀ
    np.multiply(M.T, (a - b / c) / root, out=w.spare)
    w.Xt *= b / c
    w.Xt += w.spare


def _identity(out: np.ndarray) -> np.ndarray:
    out.fill(0.0)
    out[np.diag_indices(out.shape[0])] = 1.0
    return out


def _norm_bound_upper(E: np.ndarray, block: int = 256) -> float:
    """``min(‖E‖_F, ‖E‖₁) ≥ ‖E‖₂`` of the symmetric matrix whose upper triangle ``E`` holds.

    By column blocks (the lower triangle is ignored): the rectangle above each
    diagonal block stands for its mirror image too, so it adds its squares twice to
    ``‖E‖_F²`` and its absolute column and row sums to the column sums of ``|E|``.
    """
    n = E.shape[0]
    squares = 0.0
    column_sums = np.zeros(n)
    for j in range(0, n, block):
        stop = min(n, j + block)
        above = np.abs(E[:j, j:stop])
        square = np.abs(np.triu(E[j:stop, j:stop]))
        strict = np.triu(square, 1)
        squares += 2.0 * float(np.einsum("ij,ij->", above, above) + np.einsum("ij,ij->", strict, strict))
        squares += float(np.sum(np.diagonal(square) ** 2))
        column_sums[j:stop] += above.sum(0) + square.sum(0) + strict.sum(1)
        column_sums[:j] += above.sum(1)
    return min(math.sqrt(squares), float(column_sums.max()))
