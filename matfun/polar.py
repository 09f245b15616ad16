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
``rtol = max(H, W) · eps(dtype)`` is the cut-off ``numpy.linalg.matrix_rank`` uses.

References
----------
*Move on Muon*: orthogonalisation as the dual of nuclear-norm smoothing.
N. J. Higham, *Functions of Matrices*, ch. 8 (the polar decomposition).
"""

from __future__ import annotations

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
    rtol : float, optional
        Relative cut-off: singular values ``≤ rtol·σ_max`` map to 0.  Default
        ``max(H, W)·eps`` of the compute dtype.
    precision : {"float64", "float32"} or None
        SVD precision; bfloat16 precisions compute in float32.
    method : {"svd", "qdwh", "auto"}
        ``"svd"``: the thin SVD.  ``"qdwh"``: the QDWH iteration
        (:func:`matfun.qdwh_polar`; same result and rank cut-off).  ``"auto"``:
        the faster of the two for the input's device and size
        (:func:`matfun.qdwh.choose_method`).
    """

    prefers_torch = False  # numpy's LAPACK SVD is the faster one on CPU

    def __init__(self, rtol: float | None = None, precision: str | None = None, method: str = "svd"):
        if rtol is not None and not (0 <= rtol < 1):
            raise ValueError(f"rtol must lie in [0, 1), got {rtol!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.rtol = rtol
        self.precision = precision
        self.method = method

    def _resolve_precision(self, G: Any) -> B.Precision:
        precision = B.resolve_precision(self.precision, G)
        if precision.dtype == "bfloat16" or precision.round_bf16:
            return B.Precision("float32", "float32", False)  # no bf16 SVD anywhere
        return precision

    def _spectral_factor(self, S: Any, cutoff: Any, xp: Any) -> Any:
        return xp.astype(S > cutoff, S.dtype)

    def _compute_iterates(self, X: Any, precision: B.Precision) -> Iterator[Any]:
        if B._size(X) == 0:
            yield X * 0
            return
        rtol = self.rtol if self.rtol is not None else max(X.shape[-2:]) * float(np.finfo(precision.dtype).eps)
        if self.method != "svd" and choose_method(X, self.method) == "qdwh":
            yield qdwh_compute(X, rtol)[0]
            return
        xp = B.namespace(X)
        U, S, Vh = xp.linalg.svd(X, full_matrices=False)
        cutoff = rtol * S[..., :1]  # S is sorted descending
        factor = self._spectral_factor(S, cutoff, xp)
        yield (U * factor[..., None, :]) @ Vh

    def flops(self, shape: tuple[int, ...]) -> int:
        """Estimated FLOPs: thin SVD (``6 s r² + 20 r³``, Golub & Van Loan's R-SVD) plus ``U·Vᵀ``."""
        shape = check_shape(shape)
        H, W = shape[-2:]
        r, s = min(H, W), max(H, W)
        return batch_size(shape) * (6 * s * r * r + 20 * r**3 + 2 * H * W * r)


class SmoothedPolar(Polar):
    """Smoothed polar map ``U diag(σ/√(σ²+ε²)) Vᵀ``, gradient of ``Σ(√(σ²+ε²) − ε)``.

    Parameters
    ----------
    eps : float
        Smoothing level ``ε ≥ 0`` in the units of ``G``'s singular values
        (``ε = 0`` gives :class:`Polar`).
    rtol, precision
        As for :class:`Polar`.
    """

    def __init__(self, eps: float, rtol: float | None = None, precision: str | None = None):
        if not (np.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        super().__init__(rtol, precision)
        self.eps = float(eps)

    def _spectral_factor(self, S: Any, cutoff: Any, xp: Any) -> Any:
        smooth = S / xp.hypot(S, xp.full_like(S, self.eps))
        return xp.where(S > cutoff, smooth, xp.zeros_like(S))


def polar(G: Any, *, rtol: float | None = None, precision: str | None = None, method: str = "svd",
          check_finite: bool = True) -> Any:
    """Exact polar factor ``U Vᵀ`` of each matrix in ``G`` (shape ``(..., H, W)``).

    Parameters
    ----------
    G : array of shape (..., H, W)
        numpy array or torch tensor (CPU or CUDA).
    rtol : float, optional
        Singular values ``≤ rtol·σ_max`` map to 0 (partial isometry); default
        ``max(H, W)·eps(dtype)``.
    precision : {"float64", "float32"}, optional
        SVD precision; default the input's dtype.
    method : {"svd", "qdwh", "auto"}, default "svd"
        Algorithm: the SVD, QDWH (:func:`matfun.qdwh_polar`, iteration counts
        with ``return_info=True`` there), or the faster one for this device and size.
    check_finite : bool, default True
        Raise on NaN/Inf input.

    Returns
    -------
    array
        Same library, device, shape and dtype as ``G``.  A zero matrix maps to zero.

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
    Arguments as for :func:`polar`; ``eps ≥ 0`` is absolute (not relative to ``‖G‖``).
    """
    return SmoothedPolar(eps, rtol, precision)(G, check_finite=check_finite)
