"""Sharded optimizer steps on CPU gloo: step time and bytes communicated per step.

For GPT-2-small matrix shapes (per layer: attention qkv 2304×768, attention
output 768×768, MLP 3072×768 and 768×3072), row-sharded as FSDP2 shards them
(``Shard(0)``), at world sizes 1, 2 and 4 on this machine's CPU:

* ``Muon (owner)``: one owner per matrix, gather → Newton–Schulz → scatter back;
* ``HiMuon T=…``: tile rows where they lie (no bytes when shards hold whole tile rows);
* ``gather-everything``: every rank all-gathers every matrix and runs full
  Newton–Schulz on all of them (the scheme many distributed Muon codes use).

The three run interleaved (A B C A B C …) in the same processes, so load on the
machine hits all of them alike; the median and the spread (min–max) of the step
time are printed with the bytes each rank sent.  On a 2-core CPU, world size 4
oversubscribes the cores: compare bytes across world sizes, and times only
within one world size.  Then a model projects the bytes to N GPUs (bf16 momenta,
all GPT-2-small layers).

Usage::

    python benchmarks/bench_distributed.py            # 2 layers, worlds 1 2 4, 5 repeats
    python benchmarks/bench_distributed.py --quick    # 1 layer, worlds 1 2, 3 repeats
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

GPT2_SMALL = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]  # one layer's matrices (out, in)
GPT2_LAYERS = 12


def _gather_everything(directions, shapes, steps=5):
    """The baseline: all-gather every matrix, full NS on every rank, keep own rows."""
    import torch.distributed as dist

    import matfun
    from matfun.sharding import row_partition

    rank, world = dist.get_rank(), dist.get_world_size()
    sent, outs = 0, []
    for d, (H, W) in zip(directions, shapes):
        parts = row_partition(H, world)
        chunk = parts[0][1] - parts[0][0]
        padded = d.new_zeros((chunk, W))
        padded[: d.shape[0]] = d
        full = d.new_empty((chunk * world, W))
        (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(full, padded)
        sent += padded.numel() * padded.element_size() * (world - 1)
        X = matfun.newton_schulz(full[:H], steps, "jordan", check_finite=False)
        s, e = parts[rank]
        outs.append(X[s:e])
    return outs, sent


def _worker(rank, world, shapes, tile, repeats):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from matfun.optim import HiMuon, Muon

    mesh = init_device_mesh("cpu", (world,))
    gen = torch.Generator().manual_seed(0)

    def params():
        ps = []
        for H, W in shapes:
            p = torch.nn.Parameter(distribute_tensor(torch.randn(H, W, generator=gen) * 0.02, mesh, [Shard(0)]))
            p.grad = distribute_tensor(torch.randn(H, W, generator=gen), mesh, [Shard(0)])
            ps.append(p)
        return ps

    muon_params, himuon_params, base_grads = params(), params(), [torch.randn(H, W, generator=gen) for H, W in shapes]
    base_local = [distribute_tensor(g, mesh, [Shard(0)]).to_local() for g in base_grads]
    methods = {
        "Muon (owner)": Muon(muon_params, lr=0.02, precision="float32"),
        f"HiMuon T={tile}": HiMuon(himuon_params, lr=0.02, tile=tile, precision="float32"),
    }
    times = {name: [] for name in [*methods, "gather-everything"]}
    sent = {}
    for repeat in range(repeats + 1):  # the first round warms up
        for name in times:
            dist.barrier()
            t0 = time.perf_counter()
            if name == "gather-everything":
                _, sent[name] = _gather_everything(base_local, shapes)
            else:
                methods[name].step()
                sent[name] = methods[name].last_step_communication.bytes_sent
            dist.barrier()
            if repeat:
                times[name].append(time.perf_counter() - t0)
    return {"times": times, "sent": sent}


def _projection(n_gpus: list[int], tile: int) -> list[str]:
    """Bytes per step per GPU for all GPT-2-small layers in bf16 (2 bytes), by the plan's model."""
    elems = GPT2_LAYERS * sum(H * W for H, W in GPT2_SMALL)
    rows = ["| GPUs | gather-everything | Muon (owner) | HiMuon, shards of whole tile rows |", "|---|---|---|---|"]
    for n in n_gpus:
        gather = (n - 1) / n * elems * 2  # every rank sends its shard to n − 1 others
        owner = 2 * (n - 1) / n * elems * 2 / n  # each matrix: shards to its owner and back, spread over n ranks
        rows.append(f"| {n} | {gather / 2**20:.1f} MiB | {owner / 2**20:.2f} MiB | 0 B |")
    return rows


def main(argv: list[str] | None = None) -> int:
    from matfun._spawn import run_distributed

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 layer, world sizes 1 and 2, 3 repeats")
    parser.add_argument("--layers", type=int, help="GPT-2-small layers (default 2; 1 with --quick)")
    parser.add_argument("--worlds", help="comma-separated world sizes (default 1,2,4; 1,2 with --quick)")
    parser.add_argument("--repeats", type=int, help="timed steps per method (default 5; 3 with --quick)")
    parser.add_argument("--tile", type=int, default=128, help="HiMuon tile (default 128)")
    args = parser.parse_args(argv)
    layers = args.layers or (1 if args.quick else 2)
    repeats = args.repeats or (3 if args.quick else 5)
    try:
        worlds = [int(w) for w in (args.worlds or ("1,2" if args.quick else "1,2,4")).split(",")]
    except ValueError:
        parser.error(f"--worlds must be comma-separated integers, got {args.worlds!r}")
    if layers < 1 or repeats < 1 or args.tile < 1 or min(worlds) < 1:
        parser.error("--layers, --repeats, --tile and world sizes must be >= 1")
    shapes = GPT2_SMALL * layers
    print(
        f"{layers} GPT-2-small layer(s) ({len(shapes)} matrices), float32, 5 Jordan NS steps, "
        f"{repeats} interleaved repeats, CPU gloo, torch {torch.__version__}",
        flush=True,
    )
    print(f"{'world':>5}  {'method':<18} {'step ms (median, min–max)':>28}  {'bytes sent / rank / step':>26}")
    for world in worlds:
        print(f"  running world size {world} …", file=sys.stderr, flush=True)
        runs = run_distributed(_worker, world, shapes, args.tile, repeats, timeout=1800)
        for name in runs[0]["times"]:
            per_step = [max(r["times"][name][k] for r in runs) for k in range(repeats)]  # slowest rank
            med = statistics.median(per_step) * 1e3
            sent = statistics.mean(r["sent"][name] for r in runs)
            print(
                f"{world:>5}  {name:<18} {med:>10.1f} ({min(per_step) * 1e3:.1f}–{max(per_step) * 1e3:.1f})"
                f"{'':>6}  {sent / 2**20:>20.2f} MiB"
            )
    print(f"\nProjected bytes per GPU per step, all {GPT2_LAYERS} GPT-2-small layers, bf16 momenta:")
    print("\n".join(_projection([2, 8, 64, 512], args.tile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
