"""The :class:`Map` base class shared by every orthogonalising map.

A map turns a matrix ``G`` of shape ``(..., H, W)`` (numpy array or torch tensor)
into a matrix of the same shape.  Subclasses implement one generator,
:meth:`Map._compute_iterates`, that works on the compute array and yields every
iterate ``X₀ … X_K``; :meth:`Map.__call__` (the final output) and
:meth:`Map.iterates` (every step, for diagnostics) both consume that one
generator, so the per-step curves and the output come from the same code path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from . import _backend as B


class Map(ABC):
    """Base class of the orthogonalising maps.

    Subclasses set :attr:`precision` and :attr:`prefers_torch`, and implement
    :meth:`_compute_iterates` and :meth:`flops`.
    """

    #: compute precision (see :func:`matfun.newton_schulz`); ``None`` follows the input.
    precision: str | None = None
    #: run numpy inputs on torch through a zero-copy view (matmul-heavy maps).
    prefers_torch: bool = True
    #: ``map(c·G) == map(G)`` for every ``c > 0``; lets wrappers rescale their input
    #: to stay in range (:class:`~matfun.Preconditioned`).  Off unless a map declares it.
    scale_invariant: bool = False

    def __call__(self, G: Any, *, check_finite: bool = True) -> Any:
        """Apply the map; returns the same library, device, shape and dtype as ``G``."""
        X, precision = self._prepare(G, check_finite)
        return B.from_compute(self._compute_final(X, precision), G)

    def iterates(self, G: Any, *, check_finite: bool = True) -> Iterator[Any]:
        """Yield every iterate ``X₀, X₁, …, X_K`` of one run (``[P]`` for one-shot maps).

        The iterates come from the same generator as :meth:`__call__`, so the
        last one equals the map's output exactly.
        """
        X, precision = self._prepare(G, check_finite)
        for Y in self._compute_iterates(X, precision):
            yield B.from_compute(Y, G)

    def _prepare(self, G: Any, check_finite: bool, name: str = "G") -> tuple[Any, B.Precision]:
        B.validate_matrix(G, name, check_finite=B.check_bool(check_finite, "check_finite"))
        precision = self._resolve_precision(G)
        return B.to_compute(G, precision, self.prefers_torch, rescale=self.scale_invariant), precision

    def _resolve_precision(self, G: Any) -> B.Precision:
        return B.resolve_precision(self.precision, G)

    @abstractmethod
    def _compute_iterates(self, X: Any, precision: B.Precision) -> Iterator[Any]:
        """Yield the iterates for the compute array ``X`` of shape ``(..., H, W)``."""

    def _compute_final(self, X: Any, precision: B.Precision) -> Any:
        """The last iterate of :meth:`_compute_iterates` (maps may bound memory here)."""
        out = None
        for out in self._compute_iterates(X, precision):  # noqa: B007 - keeps the last iterate
            pass
        return out

    @abstractmethod
    def flops(self, shape: tuple[int, ...]) -> int:
        """Matrix-product FLOPs of one application to an input of ``shape``."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Wrapper(Map):
    """A map built around another map ``inner`` (tiling, preconditioning).

    Precision and compute engine are the inner map's.
    """

    inner: Map

    @property
    def precision(self) -> str | None:  # type: ignore[override]  # read-only property over a Map class attribute
        return self.inner.precision

    @property
    def prefers_torch(self) -> bool:  # type: ignore[override]  # read-only property over a Map class attribute
        return self.inner.prefers_torch

    @property
    def scale_invariant(self) -> bool:  # type: ignore[override]  # read-only property over a Map class attribute
        return self.inner.scale_invariant

    def _resolve_precision(self, G: Any) -> B.Precision:
        return self.inner._resolve_precision(G)


def batch_size(shape: tuple[int, ...]) -> int:
    """Number of matrices in a ``(..., H, W)`` shape."""
    n = 1
    for d in shape[:-2]:
        n *= int(d)
    return n


def check_shape(shape: Any) -> tuple[int, ...]:
    """Validate a ``(..., H, W)`` shape given to :meth:`Map.flops`.

    Raises
    ------
    ValueError
        Not a sequence of at least two non-negative integers (floats such as
        ``4.5`` and bools are rejected, not truncated).
    """
    message = f"shape must be (..., H, W) with non-negative integer sizes, got {shape!r}"
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(message) from None
    if len(dims) < 2 or not all(B.is_integer(d) and d >= 0 for d in dims):
        raise ValueError(message)
    return tuple(int(d) for d in dims)
