"""Exact polar factor: QDWH against the SVD, interleaved timing (ratios, never asserted).

1. CPU, float64, n×n: ``matfun.polar(method="qdwh")`` vs ``scipy.linalg.polar``
   (target ratio ≤ 1.0 at 2048²).
2. CPU, float64 then float32, a size sweep of ``method="qdwh"`` vs
   ``method="svd"`` (numpy's LAPACK SVD): where QDWH pays, which sets
   ``method="auto"`` on the CPU (on the quiet 2-core machine: float64 never
   reliably, 0.9–1.5× the SVD's time from 512² to 2048², so ``auto`` keeps the
   SVD there; float32 from 512²).
3. CPU, float64: QDWH's LAPACK path (:mod:`matfun._qdwh_lapack`) vs its batched
   torch iteration, which sets ``_qdwh_lapack.MIN_SIZE`` (``--skip-paths`` to skip).
4. CUDA, float32, 4096²: QDWH vs the SVD-based polar (``torch.linalg.svd``),
   target ≥ 3× faster.  Skipped, and said so, without a GPU.

Each comparison alternates the two sides (A B B A A B …) so a change of machine
load hits both; it prints the median and the spread (min–max) of each side and
the ratio of medians.  On a shared machine read the ratios, not the seconds.

Usage (repository root): ``python -m benchmarks.bench_polar [--quick] [--repeats N] [--sizes 64 128 ...]
[--path-sizes 256 512 ...] [--skip-sweep] [--skip-headline] [--skip-paths]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch

import matfun
from matfun import _qdwh_lapack


def interleaved(
    a: Callable[[], object], b: Callable[[], object], repeats: int, sync: Callable[[], object] | None = None
) -> tuple[list[float], list[float]]:
    """Times of ``a`` and ``b``, ``repeats`` each, alternating ABBA…; one untimed warm-up each."""

    def timed(fn):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        return time.perf_counter() - t0

    a(), b()
    ta, tb = [], []
    for r in range(repeats):
        order = ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta))
        for fn, out in order:
            out.append(timed(fn))
    return ta, tb


def report(case: str, names: tuple[str, str], ta: list[float], tb: list[float], target: str) -> float:
    ma, mb = statistics.median(ta), statistics.median(tb)
    print(
        f"{case}: {names[0]} {ma:.4f} s [{min(ta):.4f}–{max(ta):.4f}]  "
        f"{names[1]} {mb:.4f} s [{min(tb):.4f}–{max(tb):.4f}]  ratio {ma / mb:.3f} ({target})"
    )
    return ma / mb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="polar at 512, sweep to 256, GPU at 1024; 3 repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 5, quick 3)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="sizes of the CPU sweep")
    p.add_argument("--skip-sweep", action="store_true", help="no CPU size sweep")
    p.add_argument("--skip-headline", action="store_true", help="no scipy comparison (e.g. to rerun the sweep)")
    p.add_argument(
        "--path-sizes",
        type=int,
        nargs="+",
        default=None,
        help="sizes of the LAPACK-path vs batched-torch comparison (default 128 256 384 512 768)",
    )
    p.add_argument("--skip-paths", action="store_true", help="no LAPACK-path vs batched-torch comparison")
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    n_cpu, n_gpu = (512, 1024) if args.quick else (2048, 4096)
    sizes = args.sizes or ([64, 128, 256] if args.quick else [64, 128, 256, 512, 1024])
    rng = np.random.default_rng(0)
    print(
        f"bench_polar: torch {torch.__version__}, {torch.get_num_threads()} threads, repeats {repeats} "
        "(interleaved, median [min-max]); shared machine -> noisy timings"
    )

    if not args.skip_headline:
        G = rng.standard_normal((n_cpu, n_cpu))
        _, info = matfun.qdwh_polar(G, return_info=True)
        print(
            f"QDWH on {n_cpu}² Gaussian: {info.iterations} steps ({info.qr_iterations} QR, "
            f"{info.cholesky_iterations} Cholesky), l0 = {info.lower_bound:.2e}"
        )
        ta, tb = interleaved(lambda: matfun.polar(G, method="qdwh"), lambda: scipy.linalg.polar(G), repeats)
        report(f"cpu float64 {n_cpu}x{n_cpu}", ("qdwh", "scipy.linalg.polar"), ta, tb, "target <= 1.0")

    if not args.skip_sweep:
        for dtype in ("float64", "float32"):
            for n in sizes:
                G = rng.standard_normal((n, n)).astype(dtype)
                ta, tb = interleaved(
                    lambda G=G: matfun.polar(G, method="qdwh"),
                    lambda G=G: matfun.polar(G, method="svd"),
                    max(repeats, 5),
                )
                report(f"cpu {dtype} {n}x{n}", ("qdwh", "svd"), ta, tb, "auto uses qdwh where < 1")

    if not args.skip_paths:
        default = _qdwh_lapack.MIN_SIZE
        for n in args.path_sizes or ([128, 256] if args.quick else [128, 256, 384, 512, 768]):
            G = rng.standard_normal((n, n))

            def through(min_size, G=G):
                _qdwh_lapack.MIN_SIZE = min_size
                try:
                    return matfun.polar(G, method="qdwh")
                finally:
                    _qdwh_lapack.MIN_SIZE = default

            ta, tb = interleaved(lambda: through(1), lambda: through(10**9), max(repeats, 9))
            report(
                f"cpu float64 {n}x{n} qdwh",
                ("lapack path", "batched torch"),
                ta,
                tb,
                f"MIN_SIZE = {default}: the LAPACK path from where < 1",
            )

    if not torch.cuda.is_available():
        print(f"cuda float32 {n_gpu}x{n_gpu}: skipped, no CUDA device here (not measured)")
        return 0
    device = torch.device("cuda")
    X = torch.randn(n_gpu, n_gpu, device=device, dtype=torch.float32)
    sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    ta, tb = interleaved(lambda: matfun.polar(X, method="qdwh"), lambda: matfun.polar(X, method="svd"), repeats, sync)
    ratio = report(f"cuda float32 {n_gpu}x{n_gpu}", ("qdwh", "svd"), ta, tb, "target <= 1/3")
    print(f"cuda speed-up of QDWH over the SVD polar: {1 / ratio:.2f}x (target >= 3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
