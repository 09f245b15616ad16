"""Full-matrix Newton–Schulz orthogonalisation (Muon's map).

``X₀ = G / (s‖G‖_F)`` per matrix, then ``K`` steps
``X ← a X + b (X Xᵀ) X + c (X Xᵀ)² X`` on the wide orientation (``H ≤ W``; tall
matrices are transposed in and out), so every Gram matrix is ``r × r`` with
``r = min(H, W)``.  Full NS is a spectral map: ``NS_K(G) = U p_K(Σ/‖G‖_F) Vᵀ``
with ``p_K`` the schedule's :func:`~matfun.schedules.transfer_function`.

Cost: ``K (4 r² s + 2 r³)`` matmul FLOPs per matrix (``s = max(H, W)``; the
``2 r³`` Gram-square is skipped on steps with ``c = 0``).

References
----------
K. Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import _backend as B
from . import _symmetric, _triton_ns
from .base import Map, batch_size, check_shape
from .schedules import ScheduleLike, check_steps, get_schedule


class NewtonSchulz(Map):
    """Full-matrix Newton–Schulz map with a coefficient schedule.

    Parameters
    ----------
    steps : int
        Number of steps ``K`` (``0`` returns the normalised input).
    coefficients : str, Schedule or sequence of (a, b, c)
        ``"cubic"``, ``"jordan"``, ``"you"``, ``"polar_express"`` or explicit
        tuples; the last tuple repeats when ``steps`` exceeds the list.
    precision : str or None
        Compute precision (see :func:`newton_schulz`).
    backend : {"auto", "torch", "triton"}
        Compute engine (see :func:`newton_schulz`).
    """

    scale_invariant = True  # X₀ = G/(s‖G‖_F)

    def __init__(
        self,
        steps: int = 5,
        coefficients: ScheduleLike = "jordan",
        precision: str | None = None,
        backend: str = "auto",
    ):
        self.steps = check_steps(steps)
        self.schedule = get_schedule(coefficients)
        self.precision = precision
        self.backend = _triton_ns.check_backend(backend)
        self._step_coefficients = self.schedule.steps(self.steps)

    def _compute_iterates(self, X: Any, precision: B.Precision) -> Iterator[Any]:
        if _triton_ns.use_triton(self.backend, X, precision):
            factor = self.schedule.normalization
            yield from _triton_ns.newton_schulz_iterates(X, self._step_coefficients, factor, precision)
            return
        tall = X.shape[-2] > X.shape[-1]
        if tall:
            X = X.mT
        rnd = B.rounding_for(precision)
        X = rnd(normalize(X, self.schedule.normalization))
        yield X.mT if tall else X
        step = _array_api_step
        if B.is_torch(X):
            step = _symmetric.symmetric_step if _symmetric.applies(X) else _torch_step
        for a, b, c in self._step_coefficients:
            X = step(X, a, b, c, rnd)
            yield X.mT if tall else X

    def _compute_final(self, X: Any, precision: B.Precision) -> Any:
        if _triton_ns.use_triton(self.backend, X, precision):
            return _triton_ns.guarded(
                self.backend,
                lambda: _triton_ns.newton_schulz(X, self._step_coefficients, self.schedule.normalization, precision),
                lambda: super(NewtonSchulz, self)._compute_final(X, precision),
            )
        return super()._compute_final(X, precision)

    def flops(self, shape: tuple[int, ...]) -> int:
        shape = check_shape(shape)
        r, s = sorted(shape[-2:])
        per_matrix = sum(4 * r * r * s + (2 * r**3 if c != 0 else 0) for _, _, c in self._step_coefficients)
        return batch_size(shape) * per_matrix


def normalize(X: Any, factor: float = 1.0) -> Any:
    """``X / (factor·‖X‖_F)`` per matrix, exactly scale invariant; zero stays zero.

    Each matrix is first divided by its largest absolute entry, so the squared
    Frobenius norm never under- or overflows (inputs of size 1e-30 or 1e30 in
    float64 normalise like inputs of size 1).  No additive epsilon is used.
    bfloat16 inputs are normalised in float32 and rounded once.
    """
    if B._size(X) == 0:
        return X
    if type(X) is torch.Tensor:  # torch's own operations: the same arithmetic, without the array-API layer
        Y = X.float() if X.dtype in (torch.bfloat16, torch.float16) else X
        amax = torch.amax(torch.abs(Y), dim=(-2, -1), keepdim=True)
        Y = Y / torch.where(amax > 0, amax, torch.ones_like(amax))
        norm = torch.sqrt(torch.sum(Y * Y, dim=(-2, -1), keepdim=True)) * factor
        Y = Y / torch.where(norm > 0, norm, torch.ones_like(norm))
        return Y.to(X.dtype) if Y.dtype != X.dtype else Y
    xp = B.namespace(X)
    low_precision = B.is_torch(X) and X.dtype in (torch.bfloat16, torch.float16)
    Y = X.float() if low_precision else X
    amax = xp.max(xp.abs(Y), axis=(-2, -1), keepdims=True)
    Y = Y / xp.where(amax > 0, amax, xp.ones_like(amax))
    norm = xp.sqrt(xp.sum(Y * Y, axis=(-2, -1), keepdims=True)) * factor
    Y = Y / xp.where(norm > 0, norm, xp.ones_like(norm))
    return Y.to(X.dtype) if low_precision else Y


def _torch_step(X: torch.Tensor, a: float, b: float, c: float, rnd: Callable[[Any], Any]) -> torch.Tensor:
    """One NS step with torch's fused ``baddbmm`` (one rounding per fused product)."""
    shape = X.shape
    X = X.reshape(batch_size(shape), *shape[-2:])
    A = rnd(torch.bmm(X, X.mT))
    if c != 0:
        A = rnd(torch.baddbmm(A, A, A, beta=b, alpha=c))
        X = rnd(torch.baddbmm(X, A, X, beta=a))
    else:
        X = rnd(torch.baddbmm(X, A, X, beta=a, alpha=b))
    return X.reshape(shape)


def _array_api_step(X: Any, a: float, b: float, c: float, rnd: Callable[[Any], Any]) -> Any:
    """One NS step in plain array-API operations (any array library)."""
    A = rnd(X @ X.mT)
    if c != 0:
        A = rnd(b * A + c * (A @ A))
        return rnd(a * X + A @ X)
    return rnd(a * X + b * (A @ X))


def newton_schulz(
    G: Any,
    steps: int = 5,
    coefficients: ScheduleLike = "jordan",
    precision: str | None = None,
    *,
    backend: str = "auto",
    check_finite: bool = True,
) -> Any:
    """Orthogonalise ``G`` with ``steps`` full-matrix Newton–Schulz steps.

    Parameters
    ----------
    G : array of shape (..., H, W)
        numpy array or torch tensor (CPU or CUDA); leading dims are a batch,
        each matrix is normalised by its own Frobenius norm.
    steps : int, default 5
        Number of steps ``K``; ``0`` returns ``G/‖G‖_F``.
    coefficients : str or sequence of (a, b, c), default "jordan"
        Schedule name (``"cubic"``, ``"jordan"``, ``"you"``,
        ``"polar_express"``) or explicit tuples (the last repeats).
    precision : {"float64", "float32", "bfloat16", "bfloat16-emulated"}, optional
        Compute precision (:data:`matfun.PRECISIONS`); default the input's
        dtype (float16 inputs compute in float32).  ``"bfloat16"`` is native
        bf16 arithmetic (torch only; products accumulate in float32 and round
        once; slow on CPU, use it on CUDA).  ``"bfloat16-emulated"`` computes
        in float32 and rounds every fused product to bfloat16: the numerics of
        native bf16 products at float32 speed, for numpy and torch alike.
    backend : {"auto", "torch", "triton"}, default "auto"
        Compute engine.  ``"torch"``: torch operations (on CPU, float32 and
        float64 Gram products of at least 1536 × 1536 use the symmetric BLAS
        routines ``syrk``/``symm``, about a third fewer FLOPs).  ``"triton"``:
        fused Triton kernels for CUDA tensors (precision ``"float32"``,
        ``"bfloat16"`` or ``"bfloat16-emulated"``; with ``TRITON_INTERPRET=1``
        also CPU tensors, through Triton's slow interpreter, for testing).
        ``"auto"``: ``"triton"`` for CUDA tensors when Triton is installed and
        the precision is supported, ``"torch"`` otherwise.  Engines agree to
        the rounding error of the precision, not bit for bit.
    check_finite : bool, default True
        Raise on NaN/Inf input (costs one pass over ``G``).

    Returns
    -------
    array
        Same library, device, shape and dtype as ``G``.

    Raises
    ------
    TypeError
        ``G`` is not a numpy array or torch tensor, or has an integer, bool or
        complex dtype; ``steps`` is not an integer; coefficients that are not
        real numbers.
    ValueError
        ``G`` has fewer than 2 dimensions, contains NaN or Inf (the message
        names the batch index), or is a ``meta`` tensor; unknown schedule name
        or precision; negative ``steps``; unknown ``backend``, or
        ``backend="triton"`` for a CPU tensor without ``TRITON_INTERPRET=1``.
    ImportError
        ``backend="triton"`` and Triton is not installed (``pip install "matfun[triton]"``).

    See Also
    --------
    newton_schulz_iterates : every iterate of one run.
    transfer_function : the scalar map on singular values.

    Examples
    --------
    >>> import numpy as np, matfun
    >>> X = matfun.newton_schulz(np.random.default_rng(0).standard_normal((64, 128)))
    >>> X.shape
    (64, 128)
    """
    return NewtonSchulz(steps, coefficients, precision, backend)(G, check_finite=check_finite)


def newton_schulz_iterates(
    G: Any,
    steps: int = 5,
    coefficients: ScheduleLike = "jordan",
    precision: str | None = None,
    *,
    backend: str = "auto",
    check_finite: bool = True,
) -> Iterator[Any]:
    """Yield ``X₀, X₁, …, X_K`` of one Newton–Schulz run (``K + 1`` arrays).

    Same arguments as :func:`newton_schulz`; the last iterate equals its output
    exactly (one code path).
    """
    return NewtonSchulz(steps, coefficients, precision, backend).iterates(G, check_finite=check_finite)
