"""Second-moment preconditioning before orthogonalisation (Muon²).

Muon² divides the momentum elementwise by an Adam-style second moment before
Newton–Schulz, ``NS(M ⊘ (√V + ε))``.  The division flattens the spectrum of
the momentum, so fewer NS steps reach a given alignment with the polar factor.

* full: ``V ← β₂ V + (1 − β₂) G ⊙ G`` (one number per entry);
* factorised (Muon²-F): ``r ← β₂ r + (1 − β₂) rowsum(G²)``,
  ``c ← β₂ c + (1 − β₂) colsum(G²)``, ``V̂ = r cᵀ / sum(c)`` (``H + W`` numbers),
  exact when ``G ⊙ G`` has rank one.

``V`` starts at zero and is not bias-corrected (as published), so with
``β₂ = 0`` one update gives ``V = G ⊙ G`` and the preconditioned matrix is
``G ⊘ (|G| + ε)``.

References
----------
*Muon²*: Adam-style second-moment preconditioning for Muon, with the factorised
low-memory variant Muon²-F.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from . import _backend as B
from .base import Map, Wrapper
from .newton_schulz import NewtonSchulz
from .schedules import ScheduleLike
from .tiling import Tiled, TileLike


def _check_eps(eps: Any) -> float:
    return B.check_real(eps, "eps", low=0, high=math.inf, high_open=True)


class SecondMoment:
    """Exponential moving average of ``G ⊙ G``, full or factorised (Muon²-F).

    Statistics accumulate in float32 or wider: float16 and bfloat16 gradients
    are squared in float32 (float16's largest value squared fits easily).  An
    update whose squares overflow the accumulation dtype (``|G|`` above about
    1.8e19 in float32, 1.3e154 in float64) raises and leaves the state as it
    was: the estimate is never poisoned with inf.

    Parameters
    ----------
    beta2 : float in [0, 1)
        EMA decay.
    eps : float >= 0
        Added to ``√V`` in :meth:`precondition`.
    factorized : bool
        Keep row and column sums only (``H + W`` numbers per matrix) and use
        ``V̂ = r cᵀ / sum(c)``.

    Raises
    ------
    TypeError
        ``beta2`` or ``eps`` not a real number, ``factorized`` not a bool.
    ValueError
        ``beta2`` outside ``[0, 1)``, ``eps`` negative or not finite.

    Examples
    --------
    >>> import numpy as np, matfun
    >>> state = matfun.SecondMoment(beta2=0.95)
    >>> G = np.random.default_rng(0).standard_normal((4, 6))
    >>> state.update(G)
    >>> state.precondition(G).shape
    (4, 6)
    """

    def __init__(self, beta2: float = 0.95, eps: float = 1e-8, factorized: bool = False):
        self.beta2 = B.check_real(beta2, "beta2", low=0, high=1, high_open=True)
        self.eps = _check_eps(eps)
        self.factorized = B.check_bool(factorized, "factorized")
        self.row: Any = None  # factorised: EMA of row sums of G², shape (..., H)
        self.col: Any = None  # factorised: EMA of column sums of G², shape (..., W)
        self.full: Any = None  # full: EMA of G², shape (..., H, W)
        self.shape: tuple[int, ...] | None = None

    def update(self, G: Any) -> None:
        """Fold one gradient ``G`` (shape ``(..., H, W)``) into the moving average.

        All or nothing: on any error the state is unchanged.

        Raises
        ------
        TypeError
            ``G`` not an array, or of another library than the tracked state.
        ValueError
            Shape or device differs from the tracked state; NaN/Inf in ``G``;
            ``G ⊙ G`` overflows the accumulation dtype.
        """
        xp = B.validate_matrix(G)
        if self.shape is not None:
            if tuple(G.shape) != self.shape:
                raise ValueError(f"G has shape {tuple(G.shape)} but this second moment tracks {self.shape}")
            tracked = self.row if self.factorized else self.full
            if tracked is not None:
                B.check_same_backend(tracked, G, "the tracked second moment", "G")
        G = _at_least_float32(G)
        with np.errstate(over="ignore"):
            G2 = G * G
        if not bool(xp.all(xp.isfinite(G2))):
            raise ValueError(
                f"G ⊙ G overflows {B.dtype_name(G2)} (max |G| = {float(xp.max(xp.abs(G))):.3g}): "
                "the second moment is not representable; the state is unchanged (rescale G)"
            )
        b, a = self.beta2, 1 - self.beta2
        if self.factorized:
            row, col = xp.sum(G2, axis=-1), xp.sum(G2, axis=-2)
            row = a * row if self.row is None else b * self.row + a * row
            col = a * col if self.col is None else b * self.col + a * col
            self.row, self.col = row, col
        else:
            self.full = a * G2 if self.full is None else b * self.full + a * G2
        self.shape = tuple(G.shape)

    @property
    def V(self) -> Any:
        """The second-moment estimate (``V̂ = r cᵀ / sum(c)`` when factorised)."""
        if self.shape is None:
            raise RuntimeError("SecondMoment has no estimate yet: call update(G) first")
        if not self.factorized:
            return self.full
        xp = B.namespace(self.row)
        total = xp.sum(self.col, axis=-1)[..., None]
        # r (c / sum c)ᵀ: c / sum(c) ≤ 1, so no intermediate overflows where r cᵀ would
        share = xp.where(total > 0, self.col / xp.where(total > 0, total, xp.ones_like(total)), xp.zeros_like(self.col))
        return self.row[..., :, None] * share[..., None, :]

    def precondition(self, M: Any) -> Any:
        """``M ⊘ (√V + ε)``."""
        return precondition(M, self.V, self.eps)


def _at_least_float32(G: Any) -> Any:
    """float16/bfloat16 arrays as float32 (statistics accumulate in float32 or wider)."""
    if B.dtype_name(G) in ("float16", "bfloat16"):
        return G.float() if B.is_torch(G) else B.namespace(G).astype(G, B.namespace(G).float32)
    return G


def check_second_moment(V: Any, M: Any, eps: float, name: str = "V") -> None:
    """Check ``V`` against ``M``: same library and device, broadcastable, finite, ``≥ 0``.

    Raises
    ------
    TypeError
        ``V`` not an array, of another library than ``M``, or not real.
    ValueError
        ``V`` on another device, does not broadcast to ``M``'s shape, has
        negative or non-finite entries, or has zeros while ``eps = 0``.
    """
    if not (B.is_numpy(V) or B.is_torch(V) or hasattr(V, "__array_namespace__")):
        raise TypeError(
            f"{name} must be an array of the same library and device as M (broadcastable to "
            f"M's shape {tuple(M.shape)}) or a SecondMoment, got {type(V).__name__}"
        )
    if B.is_torch(V) and V.device.type == "meta":
        raise ValueError(f"{name} is a torch tensor on the 'meta' device (no values)")
    B.check_same_backend(M, V, "M", name)
    kind = B.dtype_name(V)
    if kind == "bool" or "complex" in kind:
        raise TypeError(f"{name} must hold real numbers (a second moment), got dtype {kind}")
    try:
        shape = np.broadcast_shapes(tuple(V.shape), tuple(M.shape))
    except ValueError:
        shape = None
    if shape != tuple(M.shape):
        raise ValueError(f"{name} of shape {tuple(V.shape)} does not broadcast to M of shape {tuple(M.shape)}")
    xp = B.namespace(V)
    if not bool(xp.all(xp.isfinite(V))) or bool(xp.any(V < 0)):
        raise ValueError(f"{name} must be finite and non-negative (a second moment)")
    if eps == 0 and bool(xp.any(V == 0)):
        raise ValueError(f"eps = 0 and {name} has zeros: the preconditioned matrix would be infinite")


def _quotient64(M: Any, V: Any, eps: float, scaled: bool) -> Any:
    """``M ⊘ (√V + ε)`` in float64, or a positive multiple of it per matrix when ``scaled``.

    The scaled form writes each quotient as ``(m_M / m_D)·2^(e_M − e_D)`` (frexp
    mantissas and exponents of ``M`` and ``D = √V + ε``) and shifts every matrix's
    exponents so its largest entry is about 1: exact, and free of overflow and
    underflow for inputs anywhere in the finite range (``M = 1e300``,
    ``V = 0``, ``ε = 1e-300`` included).
    """
    xp = B.namespace(M)
    f64 = xp.float64
    M64, V64 = xp.astype(M, f64), xp.astype(V, f64)
    D = xp.sqrt(V64) + eps
    if not scaled:
        with np.errstate(over="ignore"):
            return M64 / D
    frexp, ldexp = (torch.frexp, torch.ldexp) if B.is_torch(M) else (np.frexp, np.ldexp)
    m_M, e_M = frexp(M64)
    m_D, e_D = frexp(D)
    e = xp.astype(e_M, xp.int64) - xp.astype(e_D, xp.int64)
    e = xp.where(m_M == 0, xp.full_like(e, -4096), e)  # zeros never set the scale
    shift = e - xp.max(e, axis=(-2, -1), keepdims=True)
    q = m_M / m_D
    return ldexp(q, xp.astype(shift, f64) if B.is_torch(M) else shift)


def precondition(M: Any, V: Any, eps: float) -> Any:
    """``M ⊘ (√V + ε)`` with checks: ``V`` broadcastable to ``M`` and non-negative.

    Computed in float64 and rounded once to ``M``'s dtype.

    Raises
    ------
    TypeError
        ``M`` or ``V`` not arrays, of different libraries, or not real;
        ``eps`` not a real number.
    ValueError
        Shape mismatch, different devices, negative or non-finite ``V``,
        negative ``eps``, ``eps = 0`` with a zero in ``V``, or a result that
        overflows ``M``'s dtype (the preconditioned maps, being scale
        invariant, handle such inputs).
    """
    xp = B.validate_matrix(M, "M")
    eps = _check_eps(eps)
    check_second_moment(V, M, eps)
    with np.errstate(over="ignore"):
        out = xp.astype(_quotient64(M, V, eps, scaled=False), M.dtype)
    if not bool(xp.all(xp.isfinite(out))):
        raise ValueError(
            f"M ⊘ (√V + ε) overflows {B.dtype_name(M)}; use preconditioned_newton_schulz "
            "(scale invariant) or a wider dtype"
        )
    return out


class Preconditioned(Wrapper):
    """Apply ``inner`` to ``M ⊘ (√V + ε)`` (Muon²).

    Parameters
    ----------
    inner : Map
        E.g. ``NewtonSchulz(5)`` or ``Tiled(NewtonSchulz(5), 128)`` (tiled and
        preconditioned compose without new code).
    second_moment : SecondMoment or array
        A :class:`SecondMoment` state (its ``V`` and ``eps`` are used) or an
        array ``V`` broadcastable to the input.
    eps : float, optional
        Overrides the state's ``eps`` (default ``1e-8`` for a plain array).

    Notes
    -----
    ``M ⊘ (√V + ε)`` is formed in float64 and, when ``inner`` is scale
    invariant (Newton–Schulz, polar, their tiled versions), multiplied by a
    power of two per matrix so that its largest entry is about 1 (exact):
    momenta and second moments anywhere in their dtype's finite range, where
    the quotient itself would overflow or underflow, give the right direction.
    """

    #: preconditioning rescales the whole input, so it must sit outside a Tiled map.
    wraps_input = True

    def __init__(self, inner: Map, second_moment: Any, eps: float | None = None):
        if not isinstance(inner, Map):
            raise TypeError(f"inner must be a matfun Map, got {type(inner).__name__}")
        self.inner = inner
        self.second_moment = second_moment
        default = second_moment.eps if isinstance(second_moment, SecondMoment) else 1e-8
        self.eps = _check_eps(default if eps is None else eps)

    @property
    def scale_invariant(self) -> bool:  # type: ignore[override]  # read-only property over a Map class attribute
        return self.inner.scale_invariant

    def _prepare(self, G: Any, check_finite: bool, name: str = "M") -> tuple[Any, B.Precision]:
        V = self.second_moment.V if isinstance(self.second_moment, SecondMoment) else self.second_moment
        B.validate_matrix(G, name, check_finite=B.check_bool(check_finite, "check_finite"))
        check_second_moment(
            V, G, self.eps, "second_moment" if not isinstance(self.second_moment, SecondMoment) else "second_moment.V"
        )
        X, precision = self.inner._prepare(G, False, name)
        V = B.to_compute(V, B.Precision("float64", "float64", False), self.inner.prefers_torch)
        Q = _quotient64(X, V, self.eps, scaled=self.inner.scale_invariant)
        xp = B.namespace(Q)
        out = xp.astype(Q, X.dtype)
        if not bool(xp.all(xp.isfinite(out))):
            raise ValueError(
                f"M ⊘ (√V + ε) overflows {B.dtype_name(out)}; {type(self.inner).__name__} is not scale invariant"
            )
        return out, precision

    def _compute_iterates(self, X: Any, precision: B.Precision) -> Iterator[Any]:
        return self.inner._compute_iterates(X, precision)

    def _compute_final(self, X: Any, precision: B.Precision) -> Any:
        return self.inner._compute_final(X, precision)

    def flops(self, shape: tuple[int, ...]) -> int:
        """The inner map's matmul FLOPs (the elementwise division adds no products)."""
        return self.inner.flops(shape)


def preconditioned_newton_schulz(
    M: Any,
    second_moment: Any,
    eps: float | None = None,
    steps: int = 5,
    coefficients: ScheduleLike = "jordan",
    *,
    tile: TileLike | None = None,
    precision: str | None = None,
    check_finite: bool = True,
) -> Any:
    """Newton–Schulz (full, or tiled when ``tile`` is given) on ``M ⊘ (√V + ε)``.

    Parameters
    ----------
    M : array of shape (..., H, W)
        The momentum.
    second_moment : SecondMoment or array
        State (full or factorised) or an array ``V`` broadcastable to ``M``.
    eps : float, optional
        Default: the state's ``eps``, or ``1e-8`` for an array.  Absolute (in
        the units of ``√V``).
    steps, coefficients, precision
        As for :func:`~matfun.newton_schulz`.
    tile : int or (int, int), optional
        Run tiled NS (HiMuon) on the preconditioned matrix.

    Returns
    -------
    array
        Same library, device, shape and dtype as ``M``.

    Raises
    ------
    TypeError
        ``M`` or ``V`` not arrays, of different libraries, or not real;
        ``eps``, ``steps`` or ``coefficients`` of the wrong type.
    ValueError
        ``V`` on another device or not broadcastable to ``M``; negative or
        non-finite ``V`` or ``eps``; NaN/Inf in ``M``; as for
        :func:`~matfun.tiled_newton_schulz` for ``tile``.
    """
    inner: Map = NewtonSchulz(steps, coefficients, precision)
    if tile is not None:
        inner = Tiled(inner, tile)
    return Preconditioned(inner, second_moment, eps)(M, check_finite=check_finite)
