"""Entry points for the multi-process sharding tests (spawned processes import this module)."""

import torch

import matfun
from matfun.sharding import plan_owners, plan_tiles, row_partition, run_units


def engine_cases(rank, world, shapes, tile, seed):
    """Tiled and owner plans on row shards; returns local outputs and the byte counts."""
    gen = torch.Generator().manual_seed(seed)
    full = [torch.randn(H, W, generator=gen, dtype=torch.float64) for H, W in shapes]
    local = [X[slice(*row_partition(X.shape[0], world)[rank])] for X in full]

    def tiled(units, mats):
        return matfun.tiled_newton_schulz_many(mats, tile, 5, "jordan") if mats else []

    def whole(units, mats):
        return [matfun.newton_schulz(X, 5, "jordan") for X in mats]

    out_t, comm_t = run_units(local, shapes, plan_tiles(shapes, [min(tile, H) for H, _ in shapes], world), tiled)
    out_o, comm_o = run_units(local, shapes, plan_owners(shapes, world), whole)
    return {"tiled": out_t, "tiled_comm": comm_t, "owner": out_o, "owner_comm": comm_o}


def engine_cases_all(rank, world, shapes, tiles, seed):
    return [engine_cases(rank, world, shapes, tile, seed) for tile in tiles]


class TwoLayer(torch.nn.Module):
    """Bias-free MLP whose widths do not divide evenly by 2 or 4 ranks."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.fc1 = torch.nn.Linear(12, 10, bias=False, dtype=dtype)
        self.fc2 = torch.nn.Linear(10, 3, bias=False, dtype=dtype)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def two_layer():
    return TwoLayer()


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-2)


class PerShardNS(torch.optim.Optimizer):
    """The classic bug: full Newton–Schulz on each rank's local shard."""

    def __init__(self, params, lr=0.02):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                local = g.to_local() if hasattr(g, "to_local") else g
                o = matfun.newton_schulz(local, 5, "jordan")
                target = p.to_local() if hasattr(p, "to_local") else p
                target.add_(o, alpha=-group["lr"])


def per_shard_ns(params):
    return PerShardNS(params)


def fail_on_rank_one(rank, world):
    """Rank 1 raises while rank 0 waits in a collective: the run must raise, not hang."""
    import torch.distributed as dist

    if rank == 1:
        raise RuntimeError("boom on rank 1")
    dist.barrier()
