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
  ``α = min(‖A‖_F, √(‖A‖₁‖A‖_∞), 1.1·σ̂_max)``.  The norm bounds can exceed
  ``‖A‖₂`` by ``√n``-ish factors (19× on a 2048² Gaussian), which would lower
  ``ℓ₀`` as much and cost steps; singular values that the power estimate
  ``σ̂_max`` leaves above 1 shrink towards 1 at every step (:meth:`_Plan.scale`).
* ``ℓ₀``: from the R factor of ``X₀`` (one QR), ``σ_min(R) = σ_min(X₀)`` is
  estimated by four steps of block inverse iteration with triangular solves
  (and ``σ_max`` by block power iteration); the estimate is never below
  ``σ_min``, which at worst costs an iteration, never accuracy: convergence is
  tested on the iterate itself.
* Finish: every Cholesky-type step first forms ``E = XᵀX − I`` (the Cholesky step
  needs ``XᵀX`` anyway).  Once ``e = min(‖E‖_F, ‖E‖₁) ≥ ‖E‖₂`` is small enough, a
  Newton–Schulz polish ``X ← X(I − E/2 + 3E²/8 − …)`` with 1 to 3 Taylor terms of
  ``(I + E)^{-1/2}`` ends the iteration with ``‖UᵀU − I‖₂ ≤ eps`` (the number of
  terms from :meth:`_Plan.polish_terms`): a matrix product where a Cholesky step
  plus a check would have been, often one step fewer.
* One scalar ``ℓ`` per batch (its smallest) in the batched torch iteration: the
  weights are then valid for every matrix of the batch; already converged
  matrices stay at their fixed point.
* The CPU: from ``n =`` :data:`matfun._qdwh_lapack.MIN_SIZE` on, each matrix runs
  on its own (its own ``ℓ₀``) through LAPACK's structured kernels
  (:mod:`matfun._qdwh_lapack`): QDWH on the triangle ``R`` of ``A = QR``, QR-based
  steps by ``tpqrt`` (a triangle on a triangle), Gram matrices by ``syrk``.
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
from typing import Any, TypedDict

import torch

from . import _backend as B

METHODS = ("svd", "qdwh", "auto")
#: ``method="auto"`` on the CPU: QDWH for float32 from this size, the SVD for float64.
#: Measured with ``python -m benchmarks.bench_polar`` on the quiet 2-core machine,
#: 2 threads, single matrices, time of QDWH (its LAPACK path) over matfun's SVD polar:
#: float32 1.14 at 256², 0.88 at 384², 0.71 and 0.64 (two runs) at 512², 0.87 at 768²,
#: 0.68 and 0.69 at 1024², 0.48 and 0.50 at 2048²; float64 0.91 and 1.19 at 512², 1.49
#: at 768², 1.15 and 1.19 at 1024², 1.10 and 1.06 at 1536², 1.02 at 2048² (QDWH's
#: BLAS-3 steps gain 2× from float32, LAPACK's SVD much less).  Against
#: ``scipy.linalg.polar`` (which also forms H) float64 QDWH wins from 384² on (0.84–0.98
#: at 2048²).  In float32 QDWH's ‖UᵀU − I‖₂ is about 2× the SVD's (2e-6 against 9e-7
#: at 1024²), both about 10 eps.
AUTO_MIN_SIZE_CPU_FLOAT32 = 512
#: ... and on CUDA from this size (NOT measured here: no GPU in the sessions that
#: wrote this; QDWH on one GPU is reported up to 4× faster than SVD libraries,
#: Sukkari, Ltaief, Keyes 2016).  Re-measure with the benchmark's GPU section.
AUTO_MIN_SIZE_CUDA = 256

#: Cholesky-based steps once ``c_k`` is at most this (Nakatsukasa & Higham 2013).
CHOLESKY_MAX_C = 100.0
#: Rank-deficiency margin on the ``σ_min`` estimate (see the module docstring).
RANK_MARGIN = 4.0
#: Taylor coefficients of ``(1 + x)^{-1/2}``: the polish ``X ← X Σ_j t_j E^j`` (``E = XᵀX − I``).
POLISH_TAYLOR = (1.0, -0.5, 0.375, -0.3125, 0.2734375)
#: The polish's test on ``‖XᵀX − I‖_F`` where rounding dominates: this many times ``n√m·eps``.
POLISH_NOISE = 4.0
#: ``X₀ = A/α`` with ``α`` at most this many times the power estimate of ``‖A‖₂``
#: (4 block steps measured 9% low on a 2048² Gaussian).
ALPHA_MARGIN = 1.1


@dataclasses.dataclass(frozen=True)
class QDWHInfo:
    """What one QDWH call did.

    Attributes
    ----------
    iterations : int
        Steps taken, the sum of the three counts below.
    qr_iterations, cholesky_iterations, polish_iterations : int
        How many of them were QR-based, Cholesky-based and the final
        Newton–Schulz polish (0 or 1; see :meth:`_Plan.polish_terms`).  On the
        CPU path, which runs matrix by matrix, each count is the largest over
        the batch.
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
    polish_iterations: int = 0


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
    :data:`AUTO_MIN_SIZE_CUDA` and for CPU float32 arrays from
    :data:`AUTO_MIN_SIZE_CPU_FLOAT32`, the SVD otherwise (on the CPU in float64
    the SVD was as fast; see the comments above the constants).
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
    if B.dtype_name(X) == "float32" and min(X.shape[-2:]) >= AUTO_MIN_SIZE_CPU_FLOAT32:
        return "qdwh"
    return "svd"


def qdwh_polar(
    G: Any, *, rtol: float | None = None, max_iter: int = 20, return_info: bool = False, check_finite: bool = True
) -> Any:
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
    if rtol is None:  # float16/bfloat16 data: the cut-off of their rounding level, as in matfun.polar
        from .polar import default_rtol  # polar imports this module

        H, W = G.shape[-2:]
        rtol = default_rtol(H, W, precision.dtype, B.dtype_name(G))
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
    exponent = B.max_exponent(X)
    if bool((exponent != 0).any()):  # (matfun.polar has scaled already)
        X = B.ldexp(X, -exponent)  # exact; keeps 1e308 or subnormal input in range
    wide = H < W
    A = (X.mT if wide else X).reshape(-1, max(H, W), min(H, W))
    eps = float(torch.finfo(A.dtype).eps)
    if rtol is None:
        from .polar import default_rtol  # polar imports this module

        rtol = default_rtol(H, W, B.dtype_name(A))
    U, info = _qdwh_tall(A, rtol, max_iter, eps)
    U = U.reshape(*batch, max(H, W), min(H, W))
    return (U.mT if wide else U), info


class _StepCounts(TypedDict):
    """Steps one matrix took on the CPU path (:func:`matfun._qdwh_lapack.qdwh_matrix`), and its ``ℓ₀``."""

    qr: int
    cholesky: int
    polish: int
    lower_bound: float


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Step choice and stopping rule, shared by the batched iteration and the CPU path."""

    rtol: float
    max_iter: int
    eps: float

    weights = staticmethod(weights)

    @staticmethod
    def use_qr(c: float) -> bool:
        return c > CHOLESKY_MAX_C

    @staticmethod
    def next_bound(ell: float, a: float, b: float, c: float) -> float:
        """``ℓ_{k+1} = ℓ_k(a + bℓ_k²)/(1 + cℓ_k²)``, the image of ``ℓ_k`` under the step's map."""
        return min(1.0, ell * (a + b * ell * ell) / (1 + c * ell * ell))

    def full_rank(self, sigma_min: torch.Tensor, sigma_max: torch.Tensor) -> torch.Tensor:
        """Per matrix: the ``σ_min`` estimate lies above the rank cut-off (with :data:`RANK_MARGIN`)."""
        return torch.isfinite(sigma_min) & (sigma_min > RANK_MARGIN * self.rtol * sigma_max)

    def polish_terms(self, ell: float, e: float, m: int, n: int) -> int:
        """Terms ``k`` of the Newton–Schulz polish that finishes a matrix with ``‖XᵀX − I‖₂ ≤ e`` (0: none yet).

        With ``XᵀX = I + E``, the polish is ``X ← X p_k(E)``, ``p_k`` the Taylor
        polynomial of ``(I + E)^{-1/2}`` to ``E^k`` (degree ``2k + 1`` in ``X``); the
        new Gram matrix is ``I − 2t_{k+1}E^{k+1} + …`` (:data:`POLISH_TAYLOR` ``= t``),
        so ``k`` terms finish once ``2|t_{k+1}|e^{k+1} ≤ eps``; ``e = min(‖E‖_F, ‖E‖₁)``
        is a rigorous bound, often 10–30× below ``‖E‖_F`` alone.
        The fewest terms that finish are used, at most 3 (``e ≤ 1.4e-4`` in float64).
        Where rounding alone puts ``e`` above ``√eps`` (float32, large ``n``: ``XᵀX``
        carries errors of ``√m·eps`` per entry, ``m × n`` the shape of the ``X`` whose Gram
        matrix gave ``e``), the bound ``ℓ`` decides, with ``e`` at that noise level, and ``k = 1``.
        """
        for k in (1, 2, 3):
            if 2 * abs(POLISH_TAYLOR[k + 1]) * e ** (k + 1) <= self.eps:
                return k
        if 1.0 - ell <= math.sqrt(self.eps) / 2 and e <= POLISH_NOISE * n * math.sqrt(m) * self.eps:
            return 1
        return 0

    @staticmethod
    def scale(sigma_max: torch.Tensor) -> torch.Tensor:
        """Extra divisor of ``X₀``: ``ALPHA_MARGIN·σ̂_max`` where that is below the norm bound ``α = 1``.

        The norm bound ``min(‖X‖_F, √(‖X‖₁‖X‖_∞))`` can exceed ``‖X‖₂`` many times
        (19× for a 2048² Gaussian), which lowers ``ℓ₀`` as much and costs steps.  The
        power estimate ``σ̂_max`` is a lower bound; singular values it leaves above 1
        shrink towards 1 at every step (``f(x) < x`` for ``x > 1``).
        """
        return torch.clamp(ALPHA_MARGIN * sigma_max, min=torch.finfo(sigma_max.dtype).tiny, max=1.0)


def _qdwh_tall(A: torch.Tensor, rtol: float, max_iter: int, eps: float) -> tuple[torch.Tensor, QDWHInfo]:
    """QDWH on a batch ``(B, m, n)`` with ``m ≥ n``: the CPU path matrix by matrix, or batched torch."""
    from . import _qdwh_lapack  # it imports this module

    plan = _Plan(rtol, max_iter, eps)
    if _qdwh_lapack.applies(A):
        return _qdwh_matrices(A, plan)
    return _qdwh_batched(A, plan)


def _qdwh_matrices(A: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, QDWHInfo]:
    """The CPU path (:mod:`matfun._qdwh_lapack`), one matrix at a time, each with its own ``ℓ₀``."""
    from . import _qdwh_lapack

    fallback: list[int] = []
    runs: list[_StepCounts] = []
    polar: dict[int, torch.Tensor] = {}
    for i in range(A.shape[0]):
        Ui, counts = _qdwh_lapack.qdwh_matrix(A[i], plan)
        if Ui is None:
            fallback.append(i)
        else:
            polar[i] = Ui
        if not math.isnan(counts["lower_bound"]):  # QDWH ran (converged or not), as in the batched info
            runs.append(counts)
    if fallback:
        for i, Ui in zip(fallback, _svd_polar(A[fallback], plan.rtol)):
            polar[i] = Ui
    results = [polar[i] for i in range(A.shape[0])]
    U = results[0][None] if len(results) == 1 else torch.stack(results)
    qr = max((c["qr"] for c in runs), default=0)
    cholesky = max((c["cholesky"] for c in runs), default=0)
    polish = max((c["polish"] for c in runs), default=0)
    return U, QDWHInfo(
        qr + cholesky + polish,
        qr,
        cholesky,
        min((c["lower_bound"] for c in runs), default=math.nan),
        tuple(fallback),
        polish,
    )


def _qdwh_batched(A: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, QDWHInfo]:
    """QDWH on a batch ``(B, m, n)`` with ``m ≥ n`` in torch (any device), one ``ℓ`` for the batch."""
    nb, m, n = A.shape
    scale = A.abs().amax(dim=(-2, -1), keepdim=True)
    zero = scale.reshape(-1) == 0
    X = A / torch.where(scale > 0, scale, torch.ones_like(scale))
    fro = torch.linalg.matrix_norm(X)
    one_inf = torch.sqrt(X.abs().sum(-2).amax(-1) * X.abs().sum(-1).amax(-1))
    alpha = torch.minimum(fro, one_inf)
    X = X / torch.where(alpha > 0, alpha, torch.ones_like(alpha))[:, None, None]
    with torch.no_grad():  # step choices need no gradient
        sigma_min, sigma_max = _extremes_of_r(torch.linalg.qr(X, mode="r").R)
    fallback = zero | ~plan.full_rank(sigma_min, sigma_max)
    tighter = plan.scale(sigma_max)
    X, sigma_min = X / tighter[:, None, None], sigma_min / tighter
    run = ~fallback
    U = torch.empty_like(X)
    steps = {"qr": 0, "cholesky": 0, "polish": 0}
    ell0 = math.nan
    done = torch.zeros(nb, dtype=torch.bool, device=X.device)
    if bool(run.any()):
        Xr = X[run] if not bool(run.all()) else X
        ell0 = ell = float(sigma_min[run].min().clamp(max=1.0))
        identity = torch.eye(n, dtype=X.dtype, device=X.device)
        while sum(steps.values()) < plan.max_iter:
            a, b, c = plan.weights(ell)
            if plan.use_qr(c):
                stacked = torch.cat([math.sqrt(c) * Xr, identity.expand(Xr.shape[0], n, n)], dim=-2)
                Q, _ = torch.linalg.qr(stacked)
                Xr = (b / c) * Xr + ((a - b / c) / math.sqrt(c)) * (Q[:, :m] @ Q[:, m:].mT)
                steps["qr"] += 1
            else:
                E = Xr.mT @ Xr - identity  # XᵀX − I
                with torch.no_grad():
                    bound = torch.minimum(torch.linalg.matrix_norm(E), torch.linalg.matrix_norm(E, ord=1))  # ≥ ‖E‖₂
                terms = plan.polish_terms(ell, float(bound.max()), m, n)
                if terms:
                    C, power = POLISH_TAYLOR[1] * E, E
                    for j in range(2, terms + 1):
                        power = power @ E
                        C = C + POLISH_TAYLOR[j] * power
                    Xr = Xr + Xr @ C
                    steps["polish"] += 1
                    done[run] = True
                    break
                L, _ = torch.linalg.cholesky_ex(c * E + (1 + c) * identity)  # I + cXᵀX ⪰ I
                Xr = (b / c) * Xr + (a - b / c) * torch.cholesky_solve(Xr.mT, L).mT
                steps["cholesky"] += 1
            ell = plan.next_bound(ell, a, b, c)
        fallback = fallback | (run & ~done)
        U[run] = Xr
    if bool(fallback.any()):
        U[fallback] = _svd_polar(A[fallback], plan.rtol)
    indices = tuple(int(i) for i in torch.nonzero(fallback).reshape(-1).tolist())
    return U, QDWHInfo(sum(steps.values()), steps["qr"], steps["cholesky"], ell0, indices, steps["polish"])


def _extremes_of_r(R: torch.Tensor, iterations: int = 4, block: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-matrix estimates of ``(σ_min, σ_max)`` of an upper triangular batch ``R`` (``(B, n, n)``).

    Block inverse iteration with triangular solves for ``σ_min`` (never below it:
    ``‖R^{-T}v‖ ≤ ‖R^{-1}‖₂`` for unit ``v``), block power iteration for ``σ_max``
    (never above it).  A singular R gives inf/nan: treated as rank-deficient.
    ``R`` is the R factor of the matrix, whose singular values it shares.
    """
    nb, _, n = R.shape
    gen = torch.Generator(device=R.device).manual_seed(0)
    start = torch.randn(n, min(block, n), generator=gen, dtype=R.dtype, device=R.device).expand(nb, -1, -1)
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
