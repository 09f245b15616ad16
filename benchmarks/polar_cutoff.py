"""Measure :func:`matfun.polar`'s default relative cut-off (issue 10, item 4).

For 64×64 inputs, float32 and float64: full-rank matrices with condition number
1e4, 1e6, 1e8 (``Q₁ diag(logspace(0, -log10 κ, 64)) Q₂ᵀ`` built in float64, then
rounded to the dtype) and a rank-10 product ``A @ B`` formed in the dtype.  For each
cut-off: the kept rank and ``‖P − P_ref‖_F``, with ``P_ref`` the float64 polar
factor of the float64 matrix (full rank: the matrix before rounding; rank 10: the
partial isometry of the exact product of the rounded factors).

Cut-offs: ``before`` = ``max(H, W)·eps`` (the old default), ``after`` = the
default now (``u·√(H+W+1)``), ``scipy`` = ``scipy.linalg.polar`` (no cut-off).

Run: ``python -m benchmarks.polar_cutoff`` (a few seconds; deterministic seeds).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

import matfun

N, RANK = 64, 10


def _orth(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, n)))[0]


def _partial_isometry(G64: np.ndarray, rank: int) -> np.ndarray:
    U, _, Vh = np.linalg.svd(G64)
    return U[:, :rank] @ Vh[:rank]


def cases(seed: int = 0):
    """``(label, dtype, G, P_ref)`` for every measured input."""
    rng = np.random.default_rng(seed)
    for cond in (1e4, 1e6, 1e8):
        G64 = _orth(rng, N) @ np.diag(np.logspace(0, -np.log10(cond), N)) @ _orth(rng, N).T
        for dtype in (np.float32, np.float64):
            yield f"cond {cond:.0e}", dtype, G64.astype(dtype), _partial_isometry(G64, N)
    for dtype in (np.float32, np.float64):
        A = rng.standard_normal((N, RANK)).astype(dtype)
        B = rng.standard_normal((RANK, N)).astype(dtype)
        exact = A.astype(np.float64) @ B.astype(np.float64)
        yield f"rank {RANK}/{N}", dtype, A @ B, _partial_isometry(exact, RANK)


def measure(G: np.ndarray, P_ref: np.ndarray, rtol: float | None) -> tuple[int, float]:
    """Kept rank and Frobenius error of one polar computation (``rtol=-1``: scipy)."""
    if rtol == -1:
        P = scipy.linalg.polar(G)[0]
    else:
        P = matfun.polar(G, rtol=rtol)
    P = P.astype(np.float64)
    kept = int(np.sum(np.linalg.svd(P, compute_uv=False) > 0.5))
    return kept, float(np.linalg.norm(P - P_ref))


def main() -> None:
    print(
        f"{'input':<11} {'dtype':<8} {'before: rank, error':>22} {'after: rank, error':>22} {'scipy: rank, error':>22}"
    )
    for label, dtype, G, P_ref in cases():
        old = max(G.shape) * float(np.finfo(dtype).eps)
        cells = [measure(G, P_ref, rtol) for rtol in (old, None, -1)]
        text = [f"{k:>3d}, {e:8.2e}" for k, e in cells]
        print(f"{label:<11} {np.dtype(dtype).name:<8} {text[0]:>22} {text[1]:>22} {text[2]:>22}")


if __name__ == "__main__":
    main()
