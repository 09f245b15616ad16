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

from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _backend as B
from .base import Map, Wrapper
from .newton_schulz import NewtonSchulz
from .schedules import ScheduleLike
from .tiling import Tiled, TileLike


def _check_eps(eps: Any) -> float:
    if not (isinstance(eps, (int, float, np.floating)) and np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


class SecondMoment:
    """Exponential moving average of ``G ⊙ G``, full or factorised (Muon²-F).

    Parameters
    ----------
    beta2 : float in [0, 1)
        EMA decay.
    eps : float >= 0
        Added to ``√V`` in :meth:`precondition`.
    factorized : bool
        Keep row and column sums only (``H + W`` numbers per matrix) and use
        ``V̂ = r cᵀ / sum(c)``.

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
        if not (0 <= beta2 < 1):
            raise ValueError(f"beta2 must lie in [0, 1), got {beta2!r}")
        self.beta2 = float(beta2)
        self.eps = _check_eps(eps)
        self.factorized = bool(factorized)
        self.row: Any = None  # factorised: EMA of row sums of G², shape (..., H)
        self.col: Any = None  # factorised: EMA of column sums of G², shape (..., W)
        self.full: Any = None  # full: EMA of G², shape (..., H, W)
        self.shape: tuple[int, ...] | None = None

    def update(self, G: Any) -> None:
        """Fold one gradient ``G`` (shape ``(..., H, W)``) into the moving average."""
        xp = B.validate_matrix(G)
        if self.shape is not None and tuple(G.shape) != self.shape:
            raise ValueError(f"G has shape {tuple(G.shape)} but this second moment tracks {self.shape}")
        self.shape = tuple(G.shape)
        G2 = G * G
        b, a = self.beta2, 1 - self.beta2
        if self.factorized:
            row, col = xp.sum(G2, axis=-1), xp.sum(G2, axis=-2)
            self.row = a * row if self.row is None else b * self.row + a * row
            self.col = a * col if self.col is None else b * self.col + a * col
        else:
            self.full = a * G2 if self.full is None else b * self.full + a * G2

    @property
    def V(self) -> Any:
        """The second-moment estimate (``V̂ = r cᵀ / sum(c)`` when factorised)."""
        if self.shape is None:
            raise RuntimeError("SecondMoment has no estimate yet: call update(G) first")
        if not self.factorized:
            return self.full
        xp = B.namespace(self.row)
        total = xp.sum(self.col, axis=-1)[..., None, None]
        outer = self.row[..., :, None] * self.col[..., None, :]
        return xp.where(total > 0, outer / xp.where(total > 0, total, xp.ones_like(total)), xp.zeros_like(outer))

    def precondition(self, M: Any) -> Any:
        """``M ⊘ (√V + ε)``."""
        return precondition(M, self.V, self.eps)


def precondition(M: Any, V: Any, eps: float) -> Any:
    """``M ⊘ (√V + ε)`` with checks: ``V`` broadcastable to ``M`` and non-negative.

    Raises
    ------
    ValueError
        Shape mismatch, negative or non-finite ``V``, negative ``eps``, or
        ``eps = 0`` with a zero in ``V``.
    """
    xp = B.validate_matrix(M, "M")
    eps = _check_eps(eps)
    try:
        shape = np.broadcast_shapes(tuple(V.shape), tuple(M.shape))
    except (ValueError, AttributeError):
        raise ValueError(
            f"V of shape {tuple(getattr(V, 'shape', ()))} does not match M of shape {tuple(M.shape)}"
        ) from None
    if shape != tuple(M.shape):
        raise ValueError(f"V of shape {tuple(V.shape)} does not broadcast to M of shape {tuple(M.shape)}")
    if not bool(xp.all(xp.isfinite(V))) or bool(xp.any(V < 0)):
        raise ValueError("V must be finite and non-negative (a second moment)")
    denominator = xp.sqrt(V) + eps
    if eps == 0 and bool(xp.any(denominator == 0)):
        raise ValueError("eps = 0 and V has zeros: the preconditioned matrix would be infinite")
    return M / denominator


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

    def _prepare(self, G: Any, check_finite: bool) -> tuple[Any, B.Precision]:
        V = self.second_moment.V if isinstance(self.second_moment, SecondMoment) else self.second_moment
        return self.inner._prepare(precondition(G, V, self.eps), check_finite)

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
        Default: the state's ``eps``, or ``1e-8`` for an array.
    steps, coefficients, precision
        As for :func:`~matfun.newton_schulz`.
    tile : int or (int, int), optional
        Run tiled NS (HiMuon) on the preconditioned matrix.

    Returns
    -------
    array
        Same library, device, shape and dtype as ``M``.
    """
    inner: Map = NewtonSchulz(steps, coefficients, precision)
    if tile is not None:
        inner = Tiled(inner, tile)
    return Preconditioned(inner, second_moment, eps)(M, check_finite=check_finite)
