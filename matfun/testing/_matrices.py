"""Test matrices with known spectra, and the distances the batteries measure (float64 numpy).

matfun must not import diagnostics: the batteries build their own matrices here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: a test-matrix family: ``make(rng, (H, W))`` draws one ``H × W`` float64 matrix
_MatrixMaker = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def _haar(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``n×k`` matrix with Haar-distributed orthonormal columns."""
    Q, R = np.linalg.qr(rng.standard_normal((n, k)))
    return Q * np.sign(np.diag(R))


def _haar_blocks(rng: np.random.Generator, n: int, block: int) -> np.ndarray:
    """``n×n`` block-diagonal orthogonal matrix, Haar blocks of ``block`` (last one ragged)."""
    Q = np.zeros((n, n))
    for start in range(0, n, block):
        k = min(block, n - start)
        Q[start : start + k, start : start + k] = _haar(rng, k, k)
    return Q


def _with_spectrum(rng: np.random.Generator, shape: tuple[int, int], sigma: np.ndarray) -> np.ndarray:
    H, W = shape
    r = min(H, W)
    return (_haar(rng, H, r) * sigma) @ _haar(rng, W, r).T


def _gaussian(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.standard_normal(shape)


def _geometric(kappa: float) -> _MatrixMaker:
    def make(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        r = min(shape)
        return _with_spectrum(rng, shape, np.geomspace(1.0, 1.0 / kappa, r))

    return make


def _rank_deficient(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    r = min(shape)
    sigma = np.zeros(r)
    sigma[: max(r // 2, 1)] = np.geomspace(1.0, 0.1, max(r // 2, 1))
    return _with_spectrum(rng, shape, sigma)


def _low_rank_noise(rng: np.random.Generator, shape: tuple[int, int], rank: int = 4, noise: float = 0.05) -> np.ndarray:
    r = min(shape)
    k = min(rank, r)
    L = _haar(rng, shape[0], k) @ _haar(rng, shape[1], k).T
    N = rng.standard_normal(shape)
    return L + N * (noise * math.sqrt(k) / np.linalg.norm(N))


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _cos(X: np.ndarray, P: np.ndarray) -> float:
    nx, npp = np.linalg.norm(X), np.linalg.norm(P)
    if not (nx > 0 and npp > 0):
        return 0.0
    return float(np.sum(X * P) / (nx * npp))


def _relerr(X: np.ndarray, R: np.ndarray) -> float:
    if X.shape != R.shape:
        raise ValueError(f"shape {X.shape} != expected {R.shape}")
    if not np.all(np.isfinite(X)):
        return math.inf
    d = np.linalg.norm(X - R)
    n = np.linalg.norm(R)
    return float(d / n) if n > 0 else (0.0 if d == 0 else math.inf)


def _name(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


#: sides of the battery's drawn shapes (see :func:`draw_shapes`)
DRAWN_SIDES = (17, 112)


def draw_shapes(seed: int) -> list[tuple[int, int]]:
    """A square, a wide and a tall shape drawn from ``seed``.

    Sides are uniform in :data:`DRAWN_SIDES` (odd sizes and non-multiples of 8
    included), the three shapes differ, and at least one side exceeds 64, so
    that a map tuned to a fixed list of shapes, or one that breaks above a
    size, meets matrices it was not written for.
    """
    rng = _rng(seed, 99)
    low, high = DRAWN_SIDES
    while True:
        n, a, b, c, d = (int(v) for v in rng.integers(low, high + 1, size=5))
        wide, tall = (min(a, b), max(a, b)), (max(c, d), min(c, d))
        shapes = [(n, n), wide, tall]
        if a != b and c != d and max(n, a, b, c, d) > 64 and len(set(shapes)) == 3:
            return shapes
