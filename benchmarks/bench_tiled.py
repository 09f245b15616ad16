"""Tiled Newton–Schulz (HiMuon) speed, measured in one run (ratios printed, never asserted).

On an N×N matrix (default 4096), 5 Jordan steps, float32 on CPU and bfloat16 on CUDA:

* full NS vs tiled NS at T ∈ {128, 256, 512}: speed-up.  Target at T = 128:
  ``min(24, 0.75 · FLOP ratio)`` (24× at N = 4096, where the FLOP ratio is 32×;
  smaller problems get the same fraction of their own FLOP ratio);
* achieved GFLOP/s = model FLOPs (``Tiled(...).flops``) / time, next to a dense N³
  GEMM in the same dtype timed in the same rounds, and % of GEMM (target at
  T = 128: 80 % on CPU, 60 % on CUDA);
* with ``--himuon PATH`` on CUDA: the official HiMuon fused kernel
  (``himuon.triton_kernels.ns5_smem``, from a checkout of its repository, not
  shipped with matfun) on the same tiles, side by side;
* a sweep of ``memory_budget`` at T = 128 (does a cache-sized chunk help?);
* cross-matrix batching: ``tiled_newton_schulz_many`` on the 48 matrices of a
  12-layer GPT-2 small (768×2304, 768×768, 768×3072, 3072×768 per layer), T = 128,
  vs a Python loop of ``tiled_newton_schulz`` (target: never slower on CPU, ≥ 1.5× on GPU).

All maps of a table run interleaved (one call of each per round); times are
medians with half the interquartile range.  Progress goes to stderr.

Usage: ``python benchmarks/bench_tiled.py [--quick] [--device cpu|cuda] [--backend auto|torch|triton]
[--precision P] [--repeats N] [--himuon PATH]``
"""

from __future__ import annotations

import argparse
import sys

import torch
from _interleave import interleaved, paired_ratio

import matfun
from matfun._triton_ns import BACKENDS

MiB = 2**20


def gpt2_small(device, dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12
    return [torch.randn(s, generator=g).to(device=device, dtype=dtype) for s in shapes]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def himuon_tiled(path: str, T: int):
    """The official HiMuon fused kernel on the T×T tiles of a matrix (split, kernel, merge), or None."""
    sys.path.insert(0, path)
    try:
        from himuon.triton_kernels.ns5_smem import ns5_smem
    except ImportError as error:
        print(f"INFO: HiMuon kernel not importable from {path} ({error}); side-by-side skipped")
        return None

    def run(G: torch.Tensor) -> torch.Tensor:
        N, M = G.shape
        tiles = G.reshape(N // T, T, M // T, T).transpose(1, 2).reshape(-1, T, T).contiguous()
        out = ns5_smem(tiles)
        return out.reshape(N // T, M // T, T, T).transpose(1, 2).reshape(N, M)

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N=1024, tiles {64,128,256}, 4-layer model, 2 repeats")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default=None, help="compute precision (default float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3 CPU / 10 CUDA; quick 2)")
    p.add_argument(
        "--full-repeats", type=int, default=None, help="rounds that include the (slow) full NS (default 1 on CPU)"
    )
    p.add_argument("-n", type=int, default=None, help="matrix size N (default 4096, quick 1024)")
    p.add_argument("--himuon", default=None, metavar="PATH", help="src/ directory of a HiMuon checkout (CUDA only)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if on_gpu else (lambda: None)
    repeats = args.repeats or (2 if args.quick else (10 if on_gpu else 3))
    full_repeats = args.full_repeats or (repeats if on_gpu else 1)
    N = args.n or (1024 if args.quick else 4096)
    tiles = [64, 128, 256] if args.quick else [128, 256, 512]
    precision = args.precision or ("bfloat16" if on_gpu else "float32")
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    T0, K = 128, 5
    print(
        f"bench_tiled: torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads, "
        f"N={N}, K={K} Jordan, precision {precision}, backend {args.backend}, {repeats} interleaved rounds "
        f"(full NS: {full_repeats}); default CPU chunk {matfun.tiling.CPU_CHUNK_BYTES // MiB} MiB; shared machine -> noisy"
    )

    G = torch.randn(N, N, device=device).to(dtype)
    ns = lambda: matfun.NewtonSchulz(K, "jordan", precision, args.backend)  # noqa: E731
    full = ns()
    maps = {f"tiled T={T}": matfun.Tiled(ns(), T) for T in tiles}
    sides = {"dense GEMM": lambda: G @ G, "full NS": lambda: full(G)}
    sides.update({name: (lambda m=m: m(G)) for name, m in maps.items()})
    official = None
    if args.himuon and on_gpu and N % T0 == 0 and dtype == torch.bfloat16:  # its kernel is bf16-only
        official = himuon_tiled(args.himuon, T0)
    if official is not None:
        sides[f"HiMuon ns5_smem T={T0}"] = lambda: official(G)
    t = interleaved(sides, repeats, sync=sync, rounds_of={"full NS": full_repeats}, label="tiled vs full")

    gemm_rate = 2 * N**3 / t["dense GEMM"].median
    model_flops = {"dense GEMM": 2 * N**3, "full NS": full.flops(G.shape)}
    model_flops.update({name: m.flops(G.shape) for name, m in maps.items()})
    if official is not None:
        model_flops[f"HiMuon ns5_smem T={T0}"] = maps[f"tiled T={T0}"].flops(G.shape)
    print(f"\n{'map':24s} {'time (median ± half IQR)':>26s} {'speed-up':>9s} {'GFLOP/s':>9s} {'% GEMM':>7s}")
    for name, sample in t.items():
        rate = model_flops[name] / sample.median
        speedup = "" if name == "dense GEMM" else f"{t['full NS'].median / sample.median:8.2f}x"
        print(f"{name:24s} {sample!s:>26s} {speedup:>9s} {rate / 1e9:9.1f} {100 * rate / gemm_rate:6.1f}%")

    print(
        f"\nmemory_budget sweep, T={T0} (default 'auto' = {'one batch' if on_gpu else f'{matfun.tiling.CPU_CHUNK_BYTES // MiB} MiB'})"
    )
    budgets = [None, 1 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 64 * MiB, 256 * MiB]
    label = lambda b: "None (one batch)" if b is None else f"{b // MiB} MiB"  # noqa: E731
    sweep_maps = {label(b): matfun.Tiled(ns(), T0, memory_budget=b) for b in budgets}
    sweep = interleaved(
        {k: (lambda m=m: m(G)) for k, m in sweep_maps.items()}, repeats, sync=sync, label="budget sweep"
    )
    best = min(sweep, key=lambda k: sweep[k].median)
    for name, sample in sweep.items():
        print(
            f"  {name:18s} {sample!s}  {sweep['None (one batch)'].median / sample.median:5.2f}x vs one batch"
            f"{'  <- best' if name == best else ''}"
        )

    layers = 4 if args.quick else 12
    mats = gpt2_small(device, dtype)[: 4 * layers]
    cross = interleaved(
        {
            "loop": lambda: [
                matfun.tiled_newton_schulz(W, T0, K, "jordan", precision, backend=args.backend) for W in mats
            ],
            "many": lambda: matfun.tiled_newton_schulz_many(mats, T0, K, "jordan", precision, backend=args.backend),
        },
        repeats,
        sync=sync,
        label="cross-layer",
    )
    batching = paired_ratio(cross["loop"], cross["many"])
    print(f"\ncross-matrix batching, GPT-2 small {layers} layers ({len(mats)} matrices), T={T0}:")
    print(
        f"  loop of tiled_newton_schulz {cross['loop']}   tiled_newton_schulz_many {cross['many']}   "
        f"speed-up {batching.median:5.2f}x"
    )

    print()
    name0 = f"tiled T={T0}"
    if name0 in t:
        flop_ratio = full.flops(G.shape) / maps[name0].flops(G.shape)
        speed_target = min(24.0, 0.75 * flop_ratio)
        speedup = t["full NS"].median / t[name0].median
        print(
            f"{verdict(speedup >= speed_target)}: tiled T={T0} speed-up vs full NS = {speedup:.1f}x "
            f"(target >= {speed_target:.1f}x = min(24, 0.75 x FLOP ratio {flop_ratio:.1f}x))"
        )
        frac = model_flops[name0] / t[name0].median / gemm_rate
        gemm_target = 0.6 if on_gpu else 0.8
        print(
            f"{verdict(frac >= gemm_target)}: tiled T={T0} achieved {100 * frac:.0f}% of dense GEMM GFLOP/s "
            f"(target >= {100 * gemm_target:.0f}% on {'GPU' if on_gpu else 'CPU'})"
        )
        if official is not None:
            vs = paired_ratio(t[name0], t[f"HiMuon ns5_smem T={T0}"])
            print(f"INFO: matfun tiled T={T0} / HiMuon ns5_smem = {vs.median:.2f} ± {vs.spread / 2:.2f} (time ratio)")
    target = 1.5 if on_gpu else 1.0
    print(
        f"{verdict(batching.median >= target)}: cross-matrix batching speed-up {batching.median:.2f}x "
        f"(target >= {target}x on {'GPU' if on_gpu else 'CPU'})"
    )
    if not on_gpu:
        auto = label(matfun.tiling.CPU_CHUNK_BYTES)
        print(
            f"INFO: default chunk {auto} runs {sweep['None (one batch)'].median / sweep[auto].median:.2f}x "
            f"vs one batch; best {best}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
