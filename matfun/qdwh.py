"""Polar factor by the QR-based dynamically weighted Halley iteration (QDWH).

For ``A`` with full column rank (tall orientation ``m ≥ n``), ``X₀ = A/α`` with
``α ≥ ‖A‖₂`` and a lower bound ``ℓ₀ ≤ σ_min(X₀)``, QDWH iterates

    ``X_{k+1} = X_k (a_k I + b_k X_kᵀX_k)(I + c_k X_kᵀX_k)^{-1}``

with weights ``(a_k, b_k, c_k)`` that make the rational map the best one for
``[ℓ_k, 1]`` (Nakatsukasa, Bai, Gygi 2010), and ``ℓ_{k+1} = ℓ_k(a_k + b_kℓ_k²)/(1 + c_kℓ_k²)``.
It converges in at most 6 steps for ``κ ≤ 10¹⁶``.  While ``c_k > 100`` (the
matrix is still ill-conditioned) a step is computed from the QR factorisation
``[√c_k X_k; I] = [Q₁; Q₂] R`` as ``X_{k+1} = (b_k/c_k) X_k + (a_k − b_k/c_k)/√c_k · Q₁Q₂ᵀ``,
which is backward stable; once ``c_k ≤ 100`` the cheaper Cholesky form
``Z = I + c_k X_kᵀX_k = LLᵀ``, ``X_{k+1} = (b_k/c_k) X_k + (a_k − b_k/c_k) X_k Z^{-1}`` is
used, stable because ``κ(Z) ≤ 1 + c_k ≤ 101`` (Nakatsukasa & Higham 2013).

Choices made here
-----------------
* Scale invariance: each matrix is divided by its largest entry before anything
  else (no overflow or underflow of norms from 1e-30 to 1e30), then by
  ``α = min(‖A‖_F, √(‖A‖₁‖A‖_∞))``, an upper bound on ``‖A‖₂``.
* ``ℓ₀``: from the R factor of ``X₀`` (one QR), ``σ_min(R) = σ_min(X₀)`` is
  estimated by four steps of block inverse iteration with triangular solves
  (and ``σ_max`` by block power iteration, for the rank test below); the
  estimate is never below ``σ_min``, which at worst costs an iteration, never
  accuracy: convergence is tested
  on the iterates themselves, ``‖X_{k+1} − X_k‖_F ≤ (5·eps)^{1/3}·√n`` with ``ℓ_k ≈ 1``.
* One scalar ``ℓ`` per batch (its smallest): the weights are then valid for every
  matrix of the batch; already converged matrices stay at their fixed point.
* Rank deficiency: QDWH needs full column rank (a singular value at rounding
  level would be amplified to 1).  A matrix whose ``σ_min`` estimate is at or
  below ``4·rtol·σ_max`` (estimated; the margin covers the estimates' errors),
  an all-zero matrix, or one that has not converged in ``max_iter`` steps is
  computed by the SVD instead, with the same cut-off ``rtol``; the result is
  then the SVD method's partial isometry.  :class:`QDWHInfo` says which.

References
----------
Y. Nakatsukasa, Z. Bai, F. Gygi, *Optimizing Halley's iteration for computing
the matrix polar decomposition*, SIAM J. Matrix Anal. Appl. 31(5), 2010.
Y. Nakatsukasa, N. J. Higham, *Stable and efficient spectral divide and conquer
algorithms for the symmetric eigenvalue decomposition and the SVD*, SIAM J. Sci.
Comput. 35(3), 2013 (QR/Cholesky switch, ``c_k ≤ 100``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from . import _backend as B

METHODS = ("svd", "qdwh", "auto")
#: ``method="auto"`` keeps the SVD on the CPU.  Measured with ``python -m
#: benchmarks.bench_polar --repeats 3 --sizes 512 1024 2048`` on the quiet 2-core
#: machine, float64, 2 threads: QDWH/SVD time 1.99 at 512², 1.39 at 1024², 1.42 at
#: 2048² (and 1.3× scipy.linalg.polar at 2048²); single-threaded the SVD wins by
#: about 2× too.  (An earlier run under heavy load suggested the opposite: LAPACK's
#: SVD suffers more from competing processes than QDWH's GEMM-rich steps.)
#: ... and on CUDA from this size (NOT measured here: no GPU in the session that
#: wrote this; QDWH on one GPU is reported up to 4× faster than SVD libraries,
#: Sukkari, Ltaief, Keyes 2016).  Re-measure with the benchmark's GPU section.
AUTO_MIN_SIZE_CUDA = 256

#: Cholesky-based steps once ``c_k`` is at most this (Nakatsukasa & Higham 2013).
CHOLESKY_MAX_C = 100.0
#: Rank-deficiency margin on the ``σ_min`` estimate (see the module docstring).
RANK_MARGIN = 4.0


@dataclasses.dataclass(frozen=True)
class QDWHInfo:
    """What one QDWH call did.

    Attributes
    ----------
    iterations : int
        QDWH steps taken (for the whole batch).
    qr_iterations, cholesky_iterations : int
        How many of them were QR-based and Cholesky-based.
    lower_bound : float
        The ``ℓ₀`` used (smallest over the batch; ``nan`` if no matrix ran QDWH).
    svd_fallback : tuple of int
        Flat batch indices computed by the SVD instead (zero, numerically
        rank-deficient or not converged), in the SVD method's contract.
    """

    iterations: int
    qr_iterations: int
    cholesky_iterations: int
    lower_bound: float
    svd_fallback: tuple[int, ...]


def weights(ell: float) -> tuple[float, float, float]:
    """Dynamic Halley weights ``(a, b, c)`` for singular values in ``[ℓ, 1]`` (NBG 2010, eq. 3.3)."""
    ell = min(max(ell, 1e-300), 1.0)
    d = (4.0 * (1.0 - ell * ell) / ell**4) ** (1.0 / 3.0)
    a = math.sqrt(1.0 + d) + 0.5 * math.sqrt(8.0 - 4.0 * d + 8.0 * (2.0 - ell * ell) / (ell * ell * math.sqrt(1.0 + d)))
    b = (a - 1.0) ** 2 / 4.0
    return a, b, a + b - 1.0


def choose_method(X: Any, method: str = "auto") -> str:
    """Resolve ``method`` for the compute array ``X``: ``"svd"`` or ``"qdwh"``.

    ``"auto"`` takes QDWH for CUDA tensors whose smaller side is at least
    :data:`AUTO_MIN_SIZE_CUDA`, the SVD otherwise (on the CPU the SVD was the
    faster at every size measured; see the comment above).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    supported = B.is_numpy(X) or B.is_torch(X)
    if method == "qdwh" and not supported:
        raise TypeError(f"method='qdwh' needs a numpy array or a torch tensor, got {type(X).__name__}")
    if method != "auto":
        return method
    if not supported:
        return "svd"
    if B.is_torch(X) and X.device.type == "cuda":
        return "qdwh" if min(X.shape[-2:]) >= AUTO_MIN_SIZE_CUDA else "svd"
    return "svd"


def qdwh_polar(G: Any, *, rtol: float | None = None, max_iter: int = 20, return_info: bool = False,
               check_finite: bool = True) -> Any:
    """Polar factor ``U`` of ``G = U H`` by QDWH (numpy or torch, CPU or CUDA, batched).

    Parameters
    ----------
    G : array of shape (..., H, W)
        numpy array or torch tensor, float32 or float64 (lower precisions run in
        float32).
    rtol : float, optional
        Rank cut-off as in :func:`matfun.polar` (the same default):
        matrices that may have a singular value ``≤ rtol·σ_max`` are computed by
        the SVD with this cut-off.
    max_iter : int
        Steps before a matrix is handed to the SVD (QDWH needs at most 6).
    return_info : bool
        Also return a :class:`QDWHInfo` with the iteration counts.
    check_finite : bool
        Raise on NaN/Inf input.

    Returns
    -------
    array, or (array, QDWHInfo)
        Same library, device, shape and dtype as ``G``.
    """
    B.validate_matrix(G, check_finite=B.check_bool(check_finite, "check_finite"))
    if not (B.is_numpy(G) or B.is_torch(G)):
        raise TypeError(f"qdwh_polar needs a numpy array or a torch tensor, got {type(G).__name__}")
    if rtol is not None:
        rtol = B.check_real(rtol, "rtol", low=0, high=1, high_open=True)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    precision = B.resolve_precision("float64" if B.dtype_name(G) == "float64" else "float32", G)
    X = B.to_compute(G, precision, prefer_torch=True)
    U, info = qdwh_compute(X, rtol, max_iter)
    out = B.from_compute(U, G)
    return (out, info) if return_info else out


def qdwh_compute(X: Any, rtol: float | None = None, max_iter: int = 20) -> tuple[torch.Tensor, QDWHInfo]:
    """QDWH on a float32/float64 compute array (numpy arrays run on torch, zero copy)."""
    if B.is_numpy(X):
        X = torch.from_numpy(B.torch_viewable(X))
    *batch, H, W = X.shape
    if X.numel() == 0:
        return X.clone(), QDWHInfo(0, 0, 0, math.nan, ())
    X = B.ldexp(X, -B.max_exponent(X))  # exact; keeps 1e308 or subnormal input in range
    wide = H < W
    A = (X.mT if wide else X).reshape(-1, max(H, W), min(H, W))
    eps = float(torch.finfo(A.dtype).eps)
    if rtol is None:
        from .polar import default_rtol  # polar imports this module

        rtol = default_rtol(H, W, B.dtype_name(A))
    U, info = _qdwh_tall(A, rtol, max_iter, eps)
    U = U.reshape(*batch, max(H, W), min(H, W))
    return (U.mT if wide else U), info


def _qdwh_tall(A: torch.Tensor, rtol: float, max_iter: int, eps: float) -> tuple[torch.Tensor, QDWHInfo]:
    """QDWH on a batch ``(B, m, n)`` with ``m ≥ n``."""
    nb, m, n = A.shape
    scale = A.abs().amax(dim=(-2, -1), keepdim=True)
    zero = scale.reshape(-1) == 0
    X = A / torch.where(scale > 0, scale, torch.ones_like(scale))
    fro = torch.linalg.matrix_norm(X)
    one_inf = torch.sqrt(X.abs().sum(-2).amax(-1) * X.abs().sum(-1).amax(-1))
    alpha = torch.minimum(fro, one_inf)
    X = X / torch.where(alpha > 0, alpha, torch.ones_like(alpha))[:, None, None]
    sigma_min, sigma_max = _extreme_singular_values(X)
    fallback = zero | ~torch.isfinite(sigma_min) | (sigma_min <= RANK_MARGIN * rtol * sigma_max)
    run = ~fallback
    U = torch.empty_like(X)
    iterations = qr_steps = chol_steps = 0
    ell0 = math.nan
    if bool(run.any()):
        Xr = X[run] if not bool(run.all()) else X
        ell0 = ell = float(sigma_min[run].min().clamp(max=1.0))
        identity = torch.eye(n, dtype=X.dtype, device=X.device)
        tol = (5 * eps) ** (1 / 3) * math.sqrt(n)
        converged = torch.zeros(Xr.shape[0], dtype=torch.bool, device=X.device)
        while iterations < max_iter:
            a, b, c = weights(ell)
            if c > CHOLESKY_MAX_C:
                stacked = torch.cat([math.sqrt(c) * Xr, identity.expand(Xr.shape[0], n, n)], dim=-2)
                Q, _ = torch.linalg.qr(stacked)
                X_new = (b / c) * Xr + ((a - b / c) / math.sqrt(c)) * (Q[:, :m] @ Q[:, m:].mT)
                qr_steps += 1
            else:
                Z = torch.baddbmm(identity.expand(Xr.shape[0], n, n), Xr.mT, Xr, alpha=c)
                L, _ = torch.linalg.cholesky_ex(Z)  # Z ⪰ I: always positive definite
                X_new = (b / c) * Xr + (a - b / c) * torch.cholesky_solve(Xr.mT, L).mT
                chol_steps += 1
            iterations += 1
            ell = min(1.0, ell * (a + b * ell * ell) / (1 + c * ell * ell))
            converged = torch.linalg.matrix_norm(X_new - Xr) <= tol
            Xr = X_new
            if abs(1 - ell) <= 10 * eps and bool(converged.all()):
                break
        done = torch.zeros(nb, dtype=torch.bool, device=X.device)
        done[run] = converged
        fallback = fallback | (run & ~done)
        U[run] = Xr
    if bool(fallback.any()):
        U[fallback] = _svd_polar(A[fallback], rtol)
    indices = tuple(int(i) for i in torch.nonzero(fallback).reshape(-1).tolist())
    return U, QDWHInfo(iterations, qr_steps, chol_steps, ell0, indices)


def _extreme_singular_values(X: torch.Tensor, iterations: int = 4, block: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-matrix estimates of ``(σ_min, σ_max)`` of a tall batch from its R factor.

    Block inverse iteration with triangular solves for ``σ_min`` (never below it:
    ``‖R^{-T}v‖ ≤ ‖R^{-1}‖₂`` for unit ``v``), block power iteration for ``σ_max``
    (never above it).  A singular R gives inf/nan: treated as rank-deficient.
    """
    nb, m, n = X.shape
    R = torch.linalg.qr(X, mode="r").R
    gen = torch.Generator(device=X.device).manual_seed(0)
    start = torch.randn(n, min(block, n), generator=gen, dtype=X.dtype, device=X.device).expand(nb, -1, -1)
    V = W = start
    for _ in range(iterations):
        V = V / torch.linalg.vector_norm(V, dim=-2, keepdim=True)
        Y = torch.linalg.solve_triangular(R.mT, V, upper=False)  # R^{-T} v
        inverse_norm = torch.linalg.vector_norm(Y, dim=-2).amax(-1)
        V = torch.linalg.solve_triangular(R, Y, upper=True)  # (RᵀR)^{-1} v
        W = W / torch.linalg.vector_norm(W, dim=-2, keepdim=True)
        Y = R @ W
        norm = torch.linalg.vector_norm(Y, dim=-2).amax(-1)
        W = R.mT @ Y
    return 1.0 / inverse_norm, norm


def _svd_polar(A: torch.Tensor, rtol: float) -> torch.Tensor:
    """``U_r V_rᵀ`` with singular values ``≤ rtol·σ_max`` dropped (the SVD method's contract)."""
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    keep = (S > rtol * S[..., :1]).to(S.dtype)
    return (U * keep[..., None, :]) @ Vh
