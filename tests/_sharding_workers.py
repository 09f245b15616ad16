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


# --------------------------------------------------------------------------- optimizers


class Net(torch.nn.Module):
    """Bias-free, float64; rows 10 (uneven on 4 ranks), 3 (fewer than 4 ranks), 8, 8, 8."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(12, 10, bias=False, dtype=torch.float64)
        self.fc2 = torch.nn.Linear(10, 3, bias=False, dtype=torch.float64)
        self.fc3 = torch.nn.Linear(3, 8, bias=False, dtype=torch.float64)
        self.fc4 = torch.nn.Linear(8, 8, bias=False, dtype=torch.float64)  # two equal shapes: one
        self.fc5 = torch.nn.Linear(8, 8, bias=False, dtype=torch.float64)  # batched call on the owner

    def forward(self, x):
        x = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return self.fc5(torch.tanh(self.fc4(torch.tanh(self.fc3(x)))))


def net():
    return Net()


def muon(params):
    from matfun.optim import Muon

    return Muon(params, lr=0.02, precision="float64")


def himuon(params):  # 4-row tiles: cut by 5-row (2 ranks) and 3-row (4 ranks) shards
    from matfun.optim import HiMuon

    return HiMuon(params, lr=0.02, tile=4, small_matrix="tile", precision="float64")


def himuon_full(params):
    from matfun.optim import HiMuon

    return HiMuon(params, lr=0.02, tile=None, precision="float64")


def muon2(params):
    from matfun.optim import Muon2

    return Muon2(params, lr=0.02, precision="float64")


def muon2_factorized_tiled(params):
    from matfun.optim import Muon2

    return Muon2(params, lr=0.02, factorized=True, tile=4, small_matrix="tile", precision="float64")


OPTIMIZERS = {f.__name__: f for f in (muon, himuon, himuon_full, muon2, muon2_factorized_tiled)}


def batch(step):
    return torch.randn(6, 12, generator=torch.Generator().manual_seed(step), dtype=torch.float64)


def train(model, opt, steps, first=0):
    for step in range(first, first + steps):
        model(batch(step)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def optimizer_cases(rank, world, names, steps):
    """Every optimizer on an FSDP2-sharded Net: final parameters, the same run resumed from a
    state_dict after the first steps, and the bytes of the last step."""
    import copy

    from torch.distributed.fsdp import fully_shard

    out = {}
    for name in names:
        factory = OPTIMIZERS[name]
        torch.manual_seed(0)
        model = fully_shard(Net())
        opt = factory(list(model.parameters()))
        train(model, opt, steps)
        torch.manual_seed(0)
        resumed = fully_shard(Net())
        first = factory(list(resumed.parameters()))
        train(resumed, first, steps - 1)
        second = factory(list(resumed.parameters()))
        second.load_state_dict(copy.deepcopy(first.state_dict()))
        train(resumed, second, 1, first=steps - 1)
        out[name] = {
            "params": {n: p.full_tensor() for n, p in model.named_parameters()},
            "resumed": {n: p.full_tensor() for n, p in resumed.named_parameters()},
            "comm": opt.last_step_communication,
        }
    return out


def unsupported_placement(rank, world):
    """A tensor-parallel (Shard(1)) parameter must be refused at construction."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from matfun.optim import Muon

    mesh = init_device_mesh("cpu", (world,))
    p = torch.nn.Parameter(distribute_tensor(torch.randn(4, 6), mesh, [Shard(1)]))
    try:
        Muon([("tp.weight", p)], lr=0.02, precision="float64")
    except ValueError as exc:
        return str(exc)
    return None


def nan_on_one_rank(rank, world):
    """A NaN in rank 1's gradient shard: every rank raises, and nothing changes anywhere."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = fully_shard(Net())
    opt = himuon(list(model.parameters()))
    train(model, opt, 1)
    model(batch(1)).pow(2).mean().backward()
    if rank == 1:
        model.fc1.weight.grad.to_local()[0, 0] = float("nan")
    before = [p.to_local().clone() for p in model.parameters()]
    steps = [g["step_count"] for g in opt.param_groups]
    try:
        opt.step()
        message = None
    except ValueError as exc:
        message = str(exc)
    unchanged = all(torch.equal(a, p.to_local()) for a, p in zip(before, model.parameters()))
    return message, unchanged and steps == [g["step_count"] for g in opt.param_groups]
