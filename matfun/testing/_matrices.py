"""Test matrices with known spectra, and the distances the batteries measure (float64 numpy).

matfun must not import diagnostics: the batteries build their own matrices here.
"""

from __future__ import annotations

import math

import numpy as np




def _haar(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``n×k`` matrix with Haar-distributed orthonormal columns."""
    Q, R = np.linalg.qr(rng.standard_normal((n, k)))
    return Q * np.sign(np.diag(R))


def _haar_blocks(rng: np.random.Generator, n: int, block: int) -> np.ndarray:
    """``n×n`` block-diagonal orthogonal matrix, Haar blocks of ``block`` (last one ragged)."""
    Q = np.zeros((n, n))
    for start in range(0, n, block):
        k = min(block, n - start)
        Q[start:start + k, start:start + k] = _haar(rng, k, k)
    return Q


def _with_spectrum(rng: np.random.Generator, shape: tuple[int, int], sigma: np.ndarray) -> np.ndarray:
    H, W = shape
    r = min(H, W)
    return (_haar(rng, H, r) * sigma) @ _haar(rng, W, r).T


def _gaussian(rng, shape):
    return rng.standard_normal(shape)


def _geometric(kappa: float):
    def make(rng, shape):
        r = min(shape)
        return _with_spectrum(rng, shape, np.geomspace(1.0, 1.0 / kappa, r))

    return make


def _rank_deficient(rng, shape):
    r = min(shape)
    sigma = np.zeros(r)
    sigma[: max(r // 2, 1)] = np.geomspace(1.0, 0.1, max(r // 2, 1))
    return _with_spectrum(rng, shape, sigma)


def _low_rank_noise(rng, shape, rank: int = 4, noise: float = 0.05):
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
