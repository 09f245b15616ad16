"""Peak memory of one optimizer step over its parameters and gradients (CPU, one process per run).

Each optimizer runs in a fresh child process on GPT-2-small shapes (2 layers: 2304×768,
768×768, 3072×768, 768×3072 each; ``P`` = their float32 size, 54 MiB), with ``malloc``
keeping freed memory so that the peak resident set is the peak of live memory.  The
child records its peak resident set after building parameters and gradients, takes
three steps, and prints the growth in units of ``P``: the optimizer state (1 P for the
momentum, 2 P with Muon²'s second moment) plus what a step holds at its peak (the map's
temporaries and, for the all-or-nothing step, every update until the commit).

Run it on two checkouts to compare (``PYTHONPATH=<checkout> python
benchmarks/bench_step_memory.py``).

Usage: ``python benchmarks/bench_step_memory.py [--optimizers Muon HiMuon Muon2]``
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys

from bench_step_overhead import RETAIN

SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 2


def child(kind: str) -> None:
    import torch

    import matfun.optim as mo

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    size = sum(p.numel() * p.element_size() for p in params)
    make = {"Muon": mo.Muon, "HiMuon": lambda ps: mo.HiMuon(ps, tile=128), "Muon2": mo.Muon2}[kind]
    opt = make(params)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(3):
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    state = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values())
    print(f"{kind:8} {(peak - base) / size:14.2f} P {state / size:10.2f} P", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--optimizers", nargs="+", choices=("Muon", "HiMuon", "Muon2"), default=["Muon", "HiMuon", "Muon2"]
    )
    parser.add_argument("--child", choices=("Muon", "HiMuon", "Muon2"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    print("peak growth over parameters and gradients, in P = float32 size of the parameters (54 MiB)")
    print(f"{'optimizer':8} {'step peak':>16} {'state':>12}")
    for kind in args.optimizers:
        command = [sys.executable, os.path.abspath(__file__), "--child", kind]
        subprocess.run(command, env={**os.environ, **RETAIN}, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
