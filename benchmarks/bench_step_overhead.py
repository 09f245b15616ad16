"""Per-step overhead of matfun's optimizers against a plain loop of the same arithmetic.

For each of ``Muon``, ``HiMuon`` and ``Muon2`` one optimizer step on a set of layer
shapes is timed against a hand-written loop doing the same arithmetic in the same
dtype with the same schedule (Jordan's quintic, 5 steps, float32 on CPU): momentum
``B.lerp_(g, 1 − μ)``, Nesterov direction, per-matrix (or per-tile) normalisation by
the largest entry then the Frobenius norm, the Newton–Schulz steps with ``bmm`` /
``baddbmm``, decoupled weight decay and the update.  The plain loop has no validation,
no finiteness check and no all-or-nothing plan; matfun's step keeps both (one host
synchronisation per step), so the ratio is the price of those guarantees plus any
per-call overhead.

Shapes: ``lm`` (the ``lm`` experiment's 64-wide, 2-layer GPT: qkv 192×64, proj 64×64,
fc 256×64, proj 64×256 per block) and ``gpt2`` (GPT-2 small: 768×2304, 768×768,
768×3072, 3072×768 per layer; 2 layers by default, ``--gpt2-layers`` for more: the
ratio is per step, and every layer costs the same).  The sides run interleaved (one
call of each per round, :mod:`_interleave`); the table prints medians and the paired
per-round ratio matfun / plain.  Targets: ≤ 1.3× on ``lm``, ≤ 1.05× on ``gpt2``.

Page faults.  On CPU, glibc's ``malloc`` returns large freed blocks to the kernel
(``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``) and every first touch of
memory taken back costs a page fault (about 4 KiB each, here ~5–10 µs): on GPT-2
shapes a step that faults in 100 MB pays tens of milliseconds that have nothing to
do with its arithmetic, and which side pays depends on where the heap's free blocks
happen to lie (both sides share one process).  The table prints the minor page
faults per call of each side.  ``--allocator retain`` reruns the measurement in a
child process whose ``malloc`` keeps freed memory (the two environment variables
above set to 4 GB): the ratio then measures the optimizer alone.  ``--allocator
both`` (the default) prints both tables.  CUDA's caching allocator keeps freed
memory anyway.

Usage: ``python benchmarks/bench_step_overhead.py [--shapes lm gpt2] [--repeats N] [--threads N]
[--allocator default|retain|both]``
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys

import torch
from _interleave import interleaved, paired_ratio

import matfun
import matfun.optim

JORDAN = matfun.get_schedule("jordan").steps(5)
MU, LR, WD, BETA2, EPS = 0.95, 0.02, 0.1, 0.95, 1e-8


def shapes(name: str, gpt2_layers: int) -> list[tuple[int, int]]:
    if name == "lm":
        return [(192, 64), (64, 64), (256, 64), (64, 256)] * 2
    return [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * gpt2_layers


def _ns(X: torch.Tensor) -> torch.Tensor:
    """Normalise each matrix of the batch ``(n, H, W)`` (H ≤ W) and run Jordan's 5 steps."""
    amax = X.abs().amax(dim=(-2, -1), keepdim=True)
    X = X / torch.where(amax > 0, amax, torch.ones_like(amax))
    norm = X.square().sum(dim=(-2, -1), keepdim=True).sqrt()
    X = X / torch.where(norm > 0, norm, torch.ones_like(norm))
    for a, b, c in JORDAN:
        A = torch.bmm(X, X.mT)
        A = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, A, X, beta=a)
    return X


def _wide_ns(U: torch.Tensor) -> torch.Tensor:
    tall = U.shape[0] > U.shape[1]
    X = _ns((U.mT if tall else U)[None])[0]
    return X.mT if tall else X


def _tiles(U: torch.Tensor, T: int) -> torch.Tensor:
    H, W = U.shape
    return U.reshape(H // T, T, W // T, T).permute(0, 2, 1, 3).reshape(-1, T, T)


def _untile(X: torch.Tensor, H: int, W: int, T: int) -> torch.Tensor:
    return X.reshape(H // T, W // T, T, T).permute(0, 2, 1, 3).reshape(H, W)


@torch.no_grad()
def plain_muon(params, bufs):
    for p, buf in zip(params, bufs):
        g = p.grad
        buf.lerp_(g, 1 - MU)
        O = _wide_ns(g.lerp(buf, MU))
        p.mul_(1 - LR * WD)
        p.add_(O, alpha=-LR * 0.2 * math.sqrt(max(p.shape)))


@torch.no_grad()
def plain_himuon(params, bufs, T):
    dirs = []
    for p, buf in zip(params, bufs):
        buf.lerp_(p.grad, 1 - MU)
        dirs.append(_tiles(p.grad.lerp(buf, MU), T))
    out = _ns(torch.cat(dirs)).split([d.shape[0] for d in dirs])
    for p, O in zip(params, out):
        p.mul_(1 - LR * WD)
        p.add_(_untile(O, *p.shape, T), alpha=-LR * 0.2 * T)


@torch.no_grad()
def plain_muon2(params, bufs, moments):
    for p, buf, V in zip(params, bufs, moments):
        g = p.grad
        buf.lerp_(g, 1 - MU)
        V.mul_(BETA2).add_(g.square(), alpha=1 - BETA2)
        M = g.lerp(buf, MU)
        O = _wide_ns((M.double() / (V.double().sqrt() + EPS)).float())  # matfun forms the quotient in float64
        p.mul_(1 - LR * WD)
        p.add_(O, alpha=-LR * 0.2 * math.sqrt(max(p.shape)))


def make_params(shape_list, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shape_list:
        p = torch.nn.Parameter(torch.randn(s, generator=g) * 0.02)
        p.grad = torch.randn(s, generator=g)
        params.append(p)
    return params


def sides_for(kind: str, shape_list, tile: int):
    common = {"lr": LR, "weight_decay": WD, "momentum": MU, "adjust_lr_fn": "match_rms_adamw"}
    ours, plain = make_params(shape_list), make_params(shape_list)
    bufs = [torch.zeros_like(p) for p in plain]
    if kind == "Muon":
        opt = matfun.optim.Muon(ours, **common)
        return opt.step, lambda: plain_muon(plain, bufs)
    if kind == "HiMuon":
        opt = matfun.optim.HiMuon(ours, tile=tile, **common)
        return opt.step, lambda: plain_himuon(plain, bufs, tile)
    opt = matfun.optim.Muon2(ours, beta2=BETA2, eps=EPS, **common)
    moments = [torch.zeros_like(p) for p in plain]
    return opt.step, lambda: plain_muon2(plain, bufs, moments)


#: glibc settings under which ``malloc`` keeps the memory a process frees (``--allocator retain``)
RETAIN = {"MALLOC_TRIM_THRESHOLD_": "4000000000", "MALLOC_MMAP_THRESHOLD_": "4000000000"}


class FaultCounter:
    """Wraps a side: counts the minor page faults of its calls (``faults`` per call, after warm-up)."""

    def __init__(self, fn):
        self.fn, self.calls, self.total = fn, 0, 0

    def __call__(self):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.fn()
        self.calls += 1
        self.total += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    def reset(self):
        self.calls = self.total = 0

    @property
    def faults(self) -> float:
        return self.total / max(self.calls, 1)


def measure(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    targets = {"lm": 1.3, "gpt2": 1.05}
    retained = all(os.environ.get(k) == v for k, v in RETAIN.items())
    allocator = "malloc keeps freed memory" if retained else "default malloc"
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), float32, Jordan K=5, {allocator}; ratio = matfun / plain"
    )
    print(
        f"{'shapes':6} {'optimizer':8} {'matfun ms':>10} {'plain ms':>10} {'ratio':>7} {'target':>7}      "
        f"{'faults/step matfun':>18} {'plain':>7}"
    )
    for name in args.shapes:
        shape_list = shapes(name, args.gpt2_layers)
        tile = 16 if name == "lm" else 128
        repeats = args.repeats or (200 if name == "lm" else 6)
        for kind in ("Muon", "HiMuon", "Muon2"):
            ours, plain = (FaultCounter(f) for f in sides_for(kind, shape_list, tile))
            for side in (ours, plain):  # warm-up outside the count
                side()
                side.reset()
            res = interleaved({"matfun": ours, "plain": plain}, repeats, warmup=1, label=f"{name} {kind}")
            ratio = paired_ratio(res["matfun"], res["plain"])
            ok = ratio.median <= targets[name]
            print(
                f"{name:6} {kind:8} {1e3 * res['matfun'].median:10.3f} {1e3 * res['plain'].median:10.3f} "
                f"{ratio.median:6.3f}× {targets[name]:6.2f}× {'PASS' if ok else 'MISS'} "
                f"{ours.faults:18.0f} {plain.faults:7.0f}",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=("lm", "gpt2"), default=["lm", "gpt2"])
    parser.add_argument("--repeats", type=int, default=0, help="rounds (default: 200 for lm, 6 for gpt2)")
    parser.add_argument("--gpt2-layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared CPU)")
    parser.add_argument(
        "--allocator",
        choices=("default", "retain", "both"),
        default="both",
        help="default: this process's malloc; retain: rerun with malloc keeping freed memory (no page "
        "faults from memory returned to the kernel); both (default): one table each",
    )
    args = parser.parse_args()
    if args.allocator in ("default", "both"):
        measure(args)
    if args.allocator in ("retain", "both"):  # glibc reads these at start-up: a child process
        child = [sys.executable, os.path.abspath(__file__), "--shapes", *args.shapes, "--allocator", "default"]
        child += [
            "--repeats",
            str(args.repeats),
            "--gpt2-layers",
            str(args.gpt2_layers),
            "--threads",
            str(args.threads),
        ]
        subprocess.run(child, env={**os.environ, **RETAIN}, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
