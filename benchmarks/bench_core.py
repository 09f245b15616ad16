"""Core-map speed against references, measured in one run (ratios, never asserted).

1. ``matfun.polar`` vs ``scipy.linalg.polar`` on a 2048×2048 float64 matrix (target ratio ≤ 1.0).
2. ``matfun.newton_schulz`` (5 Jordan steps, float32) vs a plain five-step Jordan loop
   written directly in torch on 4096×4096.  On CPU, Gram matrices of at least
   ``matfun._symmetric.MIN_GRAM_SIZE`` use BLAS syrk/symm (4 instead of 6 product
   units per step): target ratio ≤ 0.7 there, ≤ 1.0 otherwise (the target follows
   the configuration).  The batched-``bmm`` step is timed beside it.

The sides of each comparison run interleaved (A B A B …, one call each per round)
so a load spike lands on both; each side reports its median and spread (half the
interquartile range), and the ratio is the median of the per-round ratios.
Progress goes to stderr.

Usage: ``python benchmarks/bench_core.py [--quick] [--repeats N] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import scipy.linalg
import torch
from _interleave import interleaved, paired_ratio

import matfun
from matfun import _symmetric


def torch_jordan(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Muon's reference loop (Jordan quintic), written directly in torch."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / (G.norm() + 1e-7)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if tall else X


@contextlib.contextmanager
def bmm_steps_only():
    """Switch the syrk/symm step off (the batched-bmm reference step)."""
    saved = _symmetric.MIN_GRAM_SIZE
    _symmetric.MIN_GRAM_SIZE = 2**62
    try:
        yield
    finally:
        _symmetric.MIN_GRAM_SIZE = saved


def bmm_newton_schulz(X):
    with bmm_steps_only():
        return matfun.newton_schulz(X, 5, "jordan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (polar 512, NS 1024), 3 repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per comparison (default 5, quick 3)")
    p.add_argument("--device", default="cpu", help="device of the NS comparison (cpu or cuda)")
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    n_polar, n_ns = (512, 1024) if args.quick else (2048, 4096)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    print(
        f"bench_core: torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"{repeats} interleaved rounds (median ± half IQR); shared machine -> noisy timings"
    )
    rows = []

    G = rng.standard_normal((n_polar, n_polar))
    t = interleaved(
        {"matfun.polar": lambda: matfun.polar(G), "scipy.linalg.polar": lambda: scipy.linalg.polar(G)},
        repeats,
        label="polar",
    )
    rows.append((f"polar {n_polar}x{n_polar} float64", "matfun.polar", "scipy.linalg.polar", t, 1.0))

    X = torch.from_numpy(rng.standard_normal((n_ns, n_ns)).astype(np.float32)).to(device)
    syrk = _symmetric.applies(X)
    sides = {"matfun NS": lambda: matfun.newton_schulz(X, 5, "jordan"), "torch Jordan loop": lambda: torch_jordan(X, 5)}
    if syrk:
        sides["matfun NS, bmm steps"] = lambda: bmm_newton_schulz(X)
    t = interleaved(sides, repeats, sync=sync, label="newton_schulz")
    case = f"newton_schulz {n_ns}x{n_ns} float32 K=5"
    rows.append((case, "matfun NS", "torch Jordan loop", t, 0.7 if syrk else 1.0))

    print(f"\n{'case':36s} {'side':22s} {'time (median ± half IQR)':>26s}")
    for case, _, _, t, _ in rows:
        for side, sample in t.items():
            print(f"{case:36s} {side:22s} {sample!s:>26s}")
    print()
    for case, ours, ref, t, target in rows:
        ratio = paired_ratio(t[ours], t[ref])
        verdict = "PASS" if ratio.median <= target else "MISS"
        print(f"{verdict}: {case}: {ours}/{ref} = {ratio.median:.3f} ± {ratio.spread / 2:.3f} (target <= {target})")
    if syrk:
        ratio = paired_ratio(t["matfun NS"], t["matfun NS, bmm steps"])
        print(
            f"INFO: syrk/symm steps vs bmm steps = {ratio.median:.3f} ± {ratio.spread / 2:.3f} (4 vs 6 product units: 0.67)"
        )
    else:
        print(
            f"INFO: the syrk/symm step needs a CPU float32/float64 Gram side >= {_symmetric.MIN_GRAM_SIZE}; "
            "not used in this configuration (target 1.0)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
