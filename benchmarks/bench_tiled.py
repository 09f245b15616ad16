"""Tiled Newton–Schulz (HiMuon) speed, measured in one run (ratios printed, never asserted).

On an N×N float32 matrix (default 4096), 5 Jordan steps:

* full NS vs tiled NS at T ∈ {128, 256, 512}: speed-up (target ≥ 24× at T = 128;
  the FLOP ratio is N/T = 32);
* achieved GFLOP/s = model FLOPs (``Tiled(...).flops``) / time, next to a dense N³
  GEMM timed in the same run, and % of GEMM (target ≥ 80 % at T = 128);
* a sweep of ``memory_budget`` at T = 128 (does a cache-sized chunk help?);
* cross-matrix batching: ``tiled_newton_schulz_many`` on the 48 matrices of a
  12-layer GPT-2 small (768×2304, 768×768, 768×3072, 3072×768 per layer), T = 128,
  vs a Python loop of ``tiled_newton_schulz`` (target: never slower on CPU, ≥ 1.5× on GPU).

Usage: ``python benchmarks/bench_tiled.py [--quick] [--device cpu|cuda] [--repeats N]``
"""

from __future__ import annotations

import argparse

import torch

import matfun

from diagnostics.timing import gemm_roofline, time_callable

MiB = 2**20


def median_time(fn, repeats: int, warmup: int, sync) -> float:
    return time_callable(fn, warmup=warmup, repeats=repeats, sync=sync).median


def gpt2_small(device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12
    return [torch.randn(s, generator=g).to(device) for s in shapes]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N=1024, tiles {64,128,256}, 4-layer model, 2 repeats")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3 CPU / 10 CUDA; quick 2)")
    p.add_argument("--full-repeats", type=int, default=None, help="repeats of the (slow) full-NS timing (default 1 on CPU)")
    p.add_argument("-n", type=int, default=None, help="matrix size N (default 4096, quick 1024)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if on_gpu else (lambda: None)
    repeats = args.repeats or (2 if args.quick else (10 if on_gpu else 3))
    full_repeats = args.full_repeats or (repeats if on_gpu else 1)
    N = args.n or (1024 if args.quick else 4096)
    tiles = [64, 128, 256] if args.quick else [128, 256, 512]
    T0 = 128
    K = 5
    print(f"bench_tiled: torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads, "
          f"N={N}, K={K} Jordan, float32, median of {repeats} (full NS: {full_repeats}); "
          f"default CPU chunk {matfun.tiling.CPU_CHUNK_BYTES // MiB} MiB; shared machine -> noisy")

    G = torch.randn(N, N, device=device)
    gemm = gemm_roofline(N, dtype="float32", device=str(device), repeats=repeats)
    full = matfun.NewtonSchulz(K, "jordan")
    t_full = median_time(lambda: full(G), full_repeats, 0 if not on_gpu else 2, sync)
    print(f"\n{'map':22s} {'time s':>9s} {'speed-up':>9s} {'GFLOP/s':>9s} {'% GEMM':>7s}")
    print(f"{'dense GEMM ' + str(N) + '^3':22s} {2 * N**3 / gemm / 1e9:9.4f} {'':>9s} {gemm:9.1f} {100.0:6.1f}%")
    gf_full = full.flops(G.shape) / t_full / 1e9
    print(f"{'full NS':22s} {t_full:9.4f} {1.0:8.2f}x {gf_full:9.1f} {100 * gf_full / gemm:6.1f}%")
    results = {}
    for T in tiles:
        m = matfun.Tiled(matfun.NewtonSchulz(K, "jordan"), T)
        t = median_time(lambda: m(G), repeats, 1, sync)
        gf = m.flops(G.shape) / t / 1e9
        results[T] = (t_full / t, gf / gemm)
        print(f"{'tiled T=' + str(T):22s} {t:9.4f} {t_full / t:8.2f}x {gf:9.1f} {100 * gf / gemm:6.1f}%")

    print(f"\nmemory_budget sweep, T={T0} (default 'auto' = {'one batch' if on_gpu else f'{matfun.tiling.CPU_CHUNK_BYTES // MiB} MiB'})")
    budgets = [None, 1 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 64 * MiB, 256 * MiB]
    sweep = {}
    for b in budgets:
        m = matfun.Tiled(matfun.NewtonSchulz(K, "jordan"), T0, memory_budget=b)
        sweep[b] = median_time(lambda: m(G), repeats, 1, sync)
    best = min(sweep, key=sweep.get)
    for b in budgets:
        label = "None (one batch)" if b is None else f"{b // MiB} MiB"
        print(f"  {label:18s} {sweep[b]:9.4f} s  {sweep[None] / sweep[b]:5.2f}x vs one batch{'  <- best' if b == best else ''}")

    layers = 4 if args.quick else 12
    mats = gpt2_small(device)[: 4 * layers]
    loop = lambda: [matfun.tiled_newton_schulz(W, T0, K) for W in mats]
    batched = lambda: matfun.tiled_newton_schulz_many(mats, T0, K)
    t_loop = median_time(loop, repeats, 1, sync)
    t_many = median_time(batched, repeats, 1, sync)
    ratio = t_loop / t_many
    print(f"\ncross-matrix batching, GPT-2 small {layers} layers ({len(mats)} matrices), T={T0}:")
    print(f"  loop of tiled_newton_schulz {t_loop:9.4f} s   tiled_newton_schulz_many {t_many:9.4f} s   speed-up {ratio:5.2f}x")

    print()
    sp, frac = results.get(T0, (float("nan"), float("nan")))
    print(f"{verdict(sp >= 24)}: tiled T={T0} speed-up vs full NS = {sp:.1f}x (target >= 24x; FLOP ratio {N // T0}x)")
    print(f"{verdict(frac >= 0.8)}: tiled T={T0} achieved {100 * frac:.0f}% of dense GEMM GFLOP/s (target >= 80%)")
    target = 1.5 if on_gpu else 1.0
    print(f"{verdict(ratio >= target)}: cross-matrix batching speed-up {ratio:.2f}x (target >= {target}x on {'GPU' if on_gpu else 'CPU'})")
    auto = matfun.tiling.CPU_CHUNK_BYTES
    if not on_gpu and auto in sweep:
        print(f"INFO: default chunk {auto // MiB} MiB runs {sweep[None] / sweep[auto]:.2f}x vs one batch; best {('None' if best is None else f'{best // MiB} MiB')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
