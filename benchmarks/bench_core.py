"""Core-map speed against references, measured in one run (ratios, never asserted).

1. ``matfun.polar`` vs ``scipy.linalg.polar`` on a 2048×2048 float64 matrix (target ratio ≤ 1.0).
2. ``matfun.newton_schulz`` (5 Jordan steps, float32) vs a plain five-step Jordan loop
   written directly in torch on 4096×4096 (target ratio ≤ 1.0).

Times are medians of repeats (``diagnostics.timing.time_callable``).  On a shared
machine timings are noisy: read the ratios, not the absolute numbers.

Usage: ``python benchmarks/bench_core.py [--quick] [--repeats N] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.linalg
import torch

import matfun

from diagnostics.timing import time_callable


def median_time(fn, repeats: int, warmup: int = 1, sync=None) -> float:
    return time_callable(fn, warmup=warmup, repeats=repeats, sync=sync).median


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (polar 512, NS 1024), 3 repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5, quick 3)")
    p.add_argument("--device", default="cpu", help="device of the NS comparison (cpu or cuda)")
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    n_polar, n_ns = (512, 1024) if args.quick else (2048, 4096)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    rng = np.random.default_rng(0)
    print(f"bench_core: torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"repeats {repeats} (median); shared machine -> noisy timings")
    rows = []

    G = rng.standard_normal((n_polar, n_polar))
    t_ours = median_time(lambda: matfun.polar(G), repeats)
    t_ref = median_time(lambda: scipy.linalg.polar(G), repeats)
    rows.append((f"polar {n_polar}x{n_polar} float64", "scipy.linalg.polar", t_ours, t_ref))

    X = torch.from_numpy(rng.standard_normal((n_ns, n_ns)).astype(np.float32)).to(device)
    t_ours = median_time(lambda: matfun.newton_schulz(X, 5, "jordan"), repeats, sync=sync)
    t_ref = median_time(lambda: torch_jordan(X, 5), repeats, sync=sync)
    rows.append((f"newton_schulz {n_ns}x{n_ns} float32 K=5", "torch Jordan loop", t_ours, t_ref))

    print(f"{'case':38s} {'reference':20s} {'matfun s':>10s} {'ref s':>10s} {'ratio':>7s}")
    for case, ref, a, b in rows:
        print(f"{case:38s} {ref:20s} {a:10.4f} {b:10.4f} {a / b:7.3f}")
    for case, ref, a, b in rows:
        print(f"{'PASS' if a / b <= 1.0 else 'MISS'}: {case}: matfun/{ref} = {a / b:.3f} (target <= 1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
