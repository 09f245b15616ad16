"""Exact polar factor and its nuclear-norm-smoothed version, from the thin SVD.

For ``G = U Σ Vᵀ``:

* ``polar(G) = U Vᵀ`` maximises ``⟨G, O⟩`` over ``‖O‖₂ ≤ 1`` and attains the
  nuclear norm ``‖G‖_*``: it is the gradient of ``‖G‖_*`` and the steepest-descent
  direction under the spectral norm (the dual pair used by Muon).
* ``smoothed_polar(G, ε) = U diag(σ/√(σ²+ε²)) Vᵀ = G (GᵀG + ε²I)^{-1/2}`` is the
  gradient of the smoothed nuclear norm ``Σ(√(σ²+ε²) − ε)``; it tends to
  ``polar(G)`` as ``ε → 0``.

Singular values at or below ``rtol · σ_max`` are treated as zero, so a
rank-deficient ``G`` gives the partial isometry on its range.  The default
cut-off is the expected rounding level of the singular values,
``rtol = u·√(H + W + 1)`` with ``u = eps/2`` the unit roundoff of the coarser of
the input's dtype and the compute precision (the rule of *Numerical Recipes*,
also quoted by ``numpy.linalg.matrix_rank``); :func:`polar` documents the
trade-off with measured numbers.

Every matrix is scaled by the power of two that brings its largest absolute entry
into ``[0.5, 1)`` before the SVD (exact), so inputs anywhere in the finite range of their
dtype (1e308 or subnormal in float64, 3e38 or 1e-45 in float32) give the same factor as
inputs of size 1.

References
----------
*Move on Muon* (arXiv:2605.23871): orthogonalisation as the dual of nuclear-norm smoothing.
N. J. Higham, *Functions of Matrices*, SIAM (2008), ch. 8 (the polar decomposition).
W. H. Press et al., *Numerical Recipes*, 3rd ed. (2007), §2.6 (the SVD rank threshold).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _backend as B
from .base import Map, batch_size, check_shape
from .qdwh import METHODS, choose_method, qdwh_compute


class Polar(Map):
    """Exact polar factor ``U Vᵀ`` via the thin SVD.

    Parameters
    ----------
    rtol : float in [0, 1), optional
        Relative cut-off: singular values ``≤ rtol·σ_max`` map to 0.  Default
        :func:`default_rtol` (``u·√(H + W + 1)``); ``0`` keeps every non-zero
        singular value (``scipy.linalg.polar``'s behaviour).
    precision : {"float64", "float32"} or None
        SVD precision; bfloat16 precisions compute in float32.
    method : {"svd", "qdwh", "auto"}
        ``"svd"``: the thin SVD.  ``"qdwh"``: the QDWH iteration
        (:func:`matfun.qdwh_polar`; same result and rank cut-off).  ``"auto"``:
        the faster of the two for the input's device and size
        (:func:`matfun.qdwh.choose_method`).
    """

    prefers_torch = False  # numpy's LAPACK SVD is the faster one on CPU
    scale_invariant = True  # the cut-off is relative to σ_max

    def __init__(self, rtol: float | None = None, precision: str | None = None, method: str = "svd"):
        self.rtol = None if rtol is None else B.check_real(rtol, "rtol", low=0, high=1, high_open=True)
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.precision = precision
        self.method = method

    def _resolve_precision(self, G: Any) -> B.Precision:
        precision = B.resolve_precision(self.precision, G)
        if precision.dtype == "bfloat16" or precision.round_bf16:
            precision = B.Precision("float32", "float32", False)  # no bf16 SVD anywhere
        return dataclasses.replace(precision, input_dtype=B.dtype_name(G))

    def _spectral_factor(self, S: Any, cutoff: Any, e: Any, xp: Any) -> Any:
        """The map on the singular values ``S`` of ``G·2^(−e)`` (``e`` of shape ``(..., 1)``)."""
        return xp.astype(S > cutoff, S.dtype)

    def _compute_iterates(self, X: Any, precision: B.Precision) -> Iterator[Any]:
        if B._size(X) == 0:
            yield X * 0
            return
        xp = B.namespace(X)
        H, W = X.shape[-2:]
        rtol = self.rtol if self.rtol is not None else default_rtol(H, W, precision.dtype, precision.input_dtype)
        # Pre-scale each matrix by the power of two 2^(-e) that brings max|G| into [0.5, 1):
        # exact, so U, V (hence P) are those of G bit for bit wherever G's SVD itself stays in
        # range, and σ_max ≤ √(HW) keeps the SVD from overflowing or underflowing elsewhere.
        e = B.max_exponent(X)
        X = B.ldexp(X, -e)
        if self.method != "svd" and choose_method(X, self.method) == "qdwh":
            yield qdwh_compute(X, rtol)[0]
            return
        U, S, Vh = xp.linalg.svd(X, full_matrices=False)
        cutoff = rtol * S[..., :1]  # S is sorted descending
        with np.errstate(over="ignore", under="ignore"):  # see SmoothedPolar._spectral_factor
            factor = self._spectral_factor(S, cutoff, e[..., 0], xp)
        yield (U * factor[..., None, :]) @ Vh

    def flops(self, shape: tuple[int, ...]) -> int:
        """Estimated FLOPs of the method (``"auto"`` counts as the SVD, its float64 CPU choice).

        ``"svd"``: thin SVD (``6 s r² + 20 r³``, Golub & Van Loan's R-SVD) plus ``U·Vᵀ``.
        ``"qdwh"``: a typical run (``κ`` between about 10³ and 10⁸): the QR of the
        matrix and the final application of its Q (``6 s r² − (8/3) r³``), one QR-based
        step (``(11/3) r³``: ``tpqrt``, forming ``[W₁; W₂]``, ``trmm``), two Cholesky
        steps (``(10/3) r³`` each: ``syrk``, ``potrf``, ``potrs``) and the polish
        (``3 r³``); the count of steps depends on the data (:class:`matfun.qdwh.QDWHInfo`).
        """
        shape = check_shape(shape)
        H, W = shape[-2:]
        r, s = min(H, W), max(H, W)
        if self.method == "qdwh":
            return batch_size(shape) * round(6 * s * r * r - 8 * r**3 / 3 + (11 / 3 + 20 / 3 + 3) * r**3)
        return batch_size(shape) * (6 * s * r * r + 20 * r**3 + 2 * H * W * r)


def default_rtol(H: int, W: int, compute_dtype: str, input_dtype: str = "") -> float:
    """Default relative cut-off of :func:`polar`: ``u·√(H + W + 1)``.

    ``u = eps/2`` is the unit roundoff of the coarser of ``compute_dtype`` and
    ``input_dtype`` (data rounded to float16 cannot resolve singular values
    below float16's rounding level, whatever precision the SVD runs in).  It is
    the typical size of the rounding noise in the singular values of a matrix
    whose entries carry relative errors ``u`` (*Numerical Recipes*, §2.6); the
    noise measured on rank-deficient float32 products is 10–20× below it.
    """
    eps = max(B.machine_eps(d) for d in (compute_dtype, input_dtype) if d)
    return 0.5 * eps * math.sqrt(H + W + 1)


class SmoothedPolar(Polar):
    """Smoothed polar map ``U diag(σ/√(σ²+ε²)) Vᵀ``, gradient of ``Σ(√(σ²+ε²) − ε)``.

    Parameters
    ----------
    eps : float
        Smoothing level ``ε ≥ 0`` in the units of ``G``'s singular values
        (absolute, not relative to ``‖G‖``; ``ε = 0`` gives :class:`Polar`).
        The map is computed on ``G/c`` with ``c`` the power of two nearest
        above ``max|G|`` and smoothing ``ε/c``, which is the same map:
        ``P_ε(G) = P_{ε/c}(G/c)`` for every ``c > 0``.
    rtol, precision
        As for :class:`Polar`.
    """

    scale_invariant = False  # ε is absolute

    def __init__(self, eps: float, rtol: float | None = None, precision: str | None = None):
        self.eps = B.check_real(eps, "eps", low=0, high=math.inf, high_open=True)
        super().__init__(rtol, precision)

    def _spectral_factor(self, S: Any, cutoff: Any, e: Any, xp: Any) -> Any:
        # S are the singular values of G·2^(−e), so the smoothing level is ε·2^(−e) (exact).
        # ε beyond the compute dtype's range becomes inf: the factor σ/ε is then 0, which
        # is its value to within the smallest subnormal times √(HW).
        eps = B.ldexp(xp.full_like(S[..., :1], self.eps), -e)
        smooth = S / xp.hypot(S, xp.broadcast_to(eps, S.shape))
        return xp.where(S > cutoff, smooth, xp.zeros_like(S))


def polar(
    G: Any, *, rtol: float | None = None, precision: str | None = None, method: str = "svd", check_finite: bool = True
) -> Any:
    """Exact polar factor ``U Vᵀ`` of each matrix in ``G`` (shape ``(..., H, W)``).

    Parameters
    ----------
    G : array of shape (..., H, W)
        numpy array or torch tensor (CPU or CUDA), any finite values (each
        matrix is scaled exactly by a power of two before the SVD).
    rtol : float in [0, 1), optional
        Singular values ``≤ rtol·σ_max`` map to 0 (partial isometry).  Default
        ``u·√(H + W + 1)`` with ``u = eps/2`` of the coarser of the input dtype
        and the compute precision (see the trade-off below); ``0`` keeps every
        non-zero singular value, like ``scipy.linalg.polar``.
    precision : {"float64", "float32"}, optional
        SVD precision; default the input's dtype (float16 and bfloat16 inputs
        compute in float32).
    method : {"svd", "qdwh", "auto"}, default "svd"
        Algorithm: the SVD, QDWH (:func:`matfun.qdwh_polar`, iteration counts
        with ``return_info=True`` there), or the faster one for this device and size.
    check_finite : bool, default True
        Raise on NaN/Inf input.

    Returns
    -------
    array
        Same library, device, shape and dtype as ``G``.  A zero matrix maps to zero.

    Raises
    ------
    TypeError
        ``G`` not a numpy array or torch tensor, or not of a real floating
        dtype; ``rtol`` not a real number; ``check_finite`` not a bool.
    ValueError
        ``G`` with fewer than 2 dimensions, NaN/Inf (the message names the
        batch index) or on the ``meta`` device; ``rtol`` outside ``[0, 1)``;
        unknown precision.

    Notes
    -----
    The cut-off decides between two readings of a tiny singular value: real
    (a full-rank, ill-conditioned matrix: keep the direction) or rounding
    noise of a rank-deficient matrix (drop it: the partial isometry).  Below
    the rounding level of the data the two cannot be told apart.  The default
    ``u·√(H + W + 1)`` sits at that level (*Numerical Recipes*' rule; the noise
    measured on rank-deficient float32 products is 0.5–1.8·u for sizes
    64–1024, 10–20× below it).  Measured on 64×64 inputs
    (``python -m benchmarks.polar_cutoff``; kept rank, ``‖P − P_ref‖_F`` with
    ``P_ref`` the float64 polar factor of the float64 matrix, i.e. of the float64
    SVD (so float64 rows are exactly 0); before = the old default
    ``max(H, W)·eps``; scipy = ``scipy.linalg.polar``, no cut-off):

    ===============  =======  ==============  ==============  ==============
    input            dtype    before          default         scipy
    ===============  =======  ==============  ==============  ==============
    cond 1e4         float32  64, 3.6e-05     64, 3.6e-05     64, 1.6e-04
    cond 1e6         float32  54, 3.2         64, 1.7e-03     64, 3.0e-02
    cond 1e8         float32  41, 4.8         49, 3.9         64, 0.96
    rank 10 of 64    float32  10, 2.4e-07     10, 2.4e-07     64, 7.4
    cond 1e4–1e8     float64  64, 0           64, 0           64, 0
    rank 10 of 64    float64  10, 0           10, 0           64, 7.4
    ===============  =======  ==============  ==============  ==============

    So in float32 every direction above ``≈ 7e-7·σ_max`` (at 64×64; condition
    numbers up to about 1.5e6) is kept, and exactly rank-deficient input still
    gives the partial isometry.  For a full-rank float32 matrix with a larger
    condition number pass ``rtol=0`` (or compute in float64); for data with
    more noise than one rounding (long float32 sums, float16 data passed
    as float32) pass a larger ``rtol``.

    Examples
    --------
    >>> import numpy as np, matfun
    >>> P = matfun.polar(np.diag([3.0, 0.5]))
    >>> np.allclose(P, np.eye(2))
    True
    """
    return Polar(rtol, precision, method)(G, check_finite=check_finite)


def smoothed_polar(
    G: Any, eps: float, *, rtol: float | None = None, precision: str | None = None, check_finite: bool = True
) -> Any:
    """Smoothed polar factor ``U diag(σ/√(σ²+ε²)) Vᵀ = G (GᵀG + ε²I)^{-1/2}``.

    The gradient of the smoothed nuclear norm ``Σᵢ(√(σᵢ²+ε²) − ε)`` (the
    nuclear-norm-smoothing reading of orthogonalisation, *Move on Muon*).

    Parameters
    ----------
    G : array of shape (..., H, W)
        As for :func:`polar`.
    eps : float >= 0
        Smoothing level in the units of ``G``'s singular values (absolute, not
        relative to ``‖G‖``): ``smoothed_polar(c·G, c·eps) == smoothed_polar(G, eps)``
        for every ``c > 0``.  Internally ``G`` is divided by ``c``, a power of two near ``max|G|``, and
        ``eps`` with it, so huge or tiny inputs stay in range.
    rtol, precision, check_finite
        As for :func:`polar`.

    Raises
    ------
    TypeError
        ``eps`` not a real number (a string, ``None``, a bool), or as for :func:`polar`.
    ValueError
        ``eps`` negative, NaN or infinite, or as for :func:`polar`.
    """
    return SmoothedPolar(eps, rtol, precision)(G, check_finite=check_finite)
