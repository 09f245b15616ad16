"""No false pass from :func:`matfun.testing.check_sharded_optimizer` (hardening item 4).

Pure helpers are tested without processes; each spawned check (a few seconds of gloo
ranks) covers one claim, on tiny float64 models.  Module-level classes and functions
are sent to the ranks by reference.
"""

import math

import _sharding_workers as workers
import pytest
import torch

from matfun._spawn import run_distributed
from matfun.testing import check_sharded_optimizer
from matfun.testing.sharded import (
    TOL_FACTOR,
    _precision_hint,
    _state_mismatches,
    _worst,
    default_tol,
)


class Biased(torch.nn.Module):
    """Matrices and biases, float64; 10 rows (uneven on 4 ranks)."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 10, dtype=dtype)
        self.fc2 = torch.nn.Linear(10, 4, dtype=dtype)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def biased():
    return Biased()


def biased_bf16():
    return Biased(torch.bfloat16)


def muon_and_adamw(params):
    from matfun.optim import Muon

    return [
        Muon([p for p in params if p.ndim >= 2], lr=0.02, precision="float64"),
        torch.optim.AdamW([p for p in params if p.ndim < 2], lr=1e-2),
    ]


class SkipsDTensors(torch.optim.Optimizer):
    """Planted bug visible on one rank: plain SGD that leaves DTensor parameters alone."""

    def __init__(self, params, lr=0.05):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        from torch.distributed.tensor import DTensor

        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not isinstance(p, DTensor):
                    p.add_(p.grad, alpha=-group["lr"])


def skips_dtensors(params):
    return SkipsDTensors(params)


class RankDependentState(torch.optim.Optimizer):
    """Correct SGD whose non-sharded state is not the same everywhere: a key only rank 1
    has, and a replicated DTensor with each rank's own value."""

    def __init__(self, params, lr=0.05):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor, Replicate

        rank = dist.get_rank() if dist.is_initialized() else 0  # 0: the reference
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"])
                st = self.state[p]
                if rank == 1:
                    st["only_on_rank_1"] = torch.zeros(())
                if isinstance(p, DTensor):
                    st["scale"] = DTensor.from_local(
                        torch.full((2,), float(rank)), p.device_mesh, [Replicate()], run_check=False
                    )


def rank_dependent_state(params):
    return RankDependentState(params)


def muon2_factorized_default(params):
    """Muon²-F at its default precision: float32 on the CPU, whatever the parameter dtype."""
    from matfun.optim import Muon2

    return Muon2(params, lr=0.02, factorized=True)


# --------------------------------------------------------------------------- no processes


def test_replicated_state_compares_the_union_of_keys_shapes_dtypes_and_types():
    t = torch.arange(3.0)
    ok = {"a": t, "b": 1, "nan": torch.tensor([math.nan]), "f": math.nan, "l": [t, {"x": t}]}
    assert _state_mismatches([ok, dict(ok.items())]) == []
    lines = _state_mismatches(
        [
            {"a": t, "b": 1, "c": t, "d": t, "e": t, "g": [t]},
            {"a": t, "b": 1, "extra": 0, "c": t[:2], "d": t.double(), "e": 2.0, "g": [t + 1]},
            {"a": t + 1, "b": 2, "extra": 0, "c": t, "d": t, "e": t, "g": [t]},
        ]
    )
    text = "\n".join(lines)
    assert "'extra' missing on rank 0 (present on 1, 2)".replace("'extra'", "extra") in text, text
    assert "a: rank 2 differs from rank 0 (values differ)" in text
    assert "b: rank 2 differs from rank 0 (2 vs 1)".replace("(2 vs 1)", "(1 vs 2)") in text
    assert "c: rank 1 differs from rank 0 (shape (3,) vs (2,))" in text
    assert "d: rank 1 differs from rank 0 (dtype torch.float32 vs torch.float64)" in text
    assert "e: rank 1 differs from rank 0 (Tensor vs float)" in text
    assert "g: rank 1 differs from rank 0 ([0]: values differ)" in text
    assert len(lines) == 7
    # a key on rank 1 only (the reported bug: only rank 0's keys were read)
    assert _state_mismatches([{}, {"k": 1}]) == ["k missing on rank 0 (present on 1)"]


def test_default_tolerance_follows_the_compute_dtype_and_refuses_half_precision():
    assert default_tol(torch.float64) == TOL_FACTOR * torch.finfo(torch.float64).eps
    assert default_tol(torch.float64, torch.float32) == default_tol(torch.float32) == TOL_FACTOR * 2.0**-23
    assert default_tol(torch.float32, torch.float64) == default_tol(torch.float32)  # the coarser one
    for dtype in (torch.bfloat16, torch.float16):
        with pytest.raises(ValueError, match="pass tol= explicitly"):
            default_tol(torch.float64, dtype)
    # float32-level error under a float64 tolerance: the hint names the argument; a bug's size gets none
    assert "compute_dtype=torch.float32" in _precision_hint(6.3e-7, torch.float64)
    assert _precision_hint(4e-2, torch.float64) == "" and _precision_hint(6.3e-7, torch.float32) == ""
    # tol=0 (exact) picks the worst parameter without dividing by zero
    assert _worst([("a", 0.0, 0.0), ("b", 1e-20, 0.0), ("c", 0.5, 1.0)])[0] == "b"
    assert _worst([("a", 1.0, 1e-3), ("b", math.nan, 1.0)])[0] == "b"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -5}, "timeout"),
        ({"timeout": "60"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"world_size": 0}, "world_size"),
        ({"world_size": 1.0}, "world_size"),
        ({"world_size": True}, "world_size"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"batch": -1}, "batch"),
        ({"seed": 1.5}, "seed"),
        ({"tol": math.nan}, "tol"),
        ({"tol": -1e-9}, "tol"),
        ({"tol": math.inf}, "tol"),
        ({"compute_dtype": torch.int64}, "compute_dtype"),
        ({"compute_dtype": "float8"}, "compute_dtype"),
        ({"inputs": [torch.zeros(2, 6)], "steps": 2}, "inputs"),
        ({"compute_dtype": torch.bfloat16}, "no default tolerance in bfloat16"),
    ],
)
def test_every_numeric_argument_is_validated_before_anything_runs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_sharded_optimizer(biased, muon_and_adamw, **kwargs)


def test_bad_timeouts_are_refused_by_the_runner_too_and_half_precision_needs_tol():
    for timeout in (math.nan, 0, -5, math.inf):
        with pytest.raises(ValueError, match="timeout must be a finite number"):
            run_distributed(workers.fail_on_rank_one, 2, timeout=timeout)
    with pytest.raises(ValueError, match="no default tolerance in bfloat16"):
        check_sharded_optimizer(biased_bf16, workers.adamw)
    with pytest.raises(TypeError, match="optimizer_fn must be callable"):
        check_sharded_optimizer(biased, None)


# --------------------------------------------------------------------------- spawned ranks


def test_world_size_one_passes_muon_and_adamw_and_fails_a_planted_bug():
    # the ranks' initial snapshot used to alias the parameter (full_tensor() on a one-rank mesh
    # is the local shard): every correct optimizer "had other initial weights"
    good = check_sharded_optimizer(biased, muon_and_adamw, world_size=1, steps=2, timeout=None)
    assert good.passed, good.table()
    assert good["params_match_reference"].value <= 1e-15
    assert "single rank" in good["replicated_state_identical"].detail
    bad = check_sharded_optimizer(biased, skips_dtensors, world_size=1, steps=2)
    assert bad.failed_names == ["params_match_reference"], bad.table()
    assert bad["params_match_reference"].value > 1e-3
    assert "initial weights" not in bad["params_match_reference"].detail


def test_state_on_one_rank_only_or_a_replicated_dtensor_that_differs_fails():
    report = check_sharded_optimizer(workers.two_layer, rank_dependent_state, world_size=2, steps=1)
    assert report.failed_names == ["replicated_state_identical"], report.table()
    detail = report["replicated_state_identical"].detail
    assert "state['only_on_rank_1'] missing on rank 0 (present on 1)" in detail
    assert "state['scale']: rank 1 differs from rank 0 (values differ)" in detail
    assert report["replicated_state_identical"].value == 4  # two parameters × two keys


def test_float32_compute_on_a_float64_model_is_named_and_passes_at_its_tolerance():
    # Muon2-F computes in float32 by default: at the float64 tolerance it fails, and the detail
    # says that the error is float32 rounding and which argument to set
    strict = check_sharded_optimizer(workers.net, muon2_factorized_default, world_size=2, steps=3)
    check = strict["params_match_reference"]
    assert strict.failed_names == ["params_match_reference"], strict.table()
    assert 1e-8 < check.value < 1e-5 and check.threshold == default_tol(torch.float64)
    assert "float32 rounding" in check.detail and "compute_dtype=torch.float32" in check.detail
    loose = check_sharded_optimizer(
        workers.net, muon2_factorized_default, world_size=4, steps=3, compute_dtype=torch.float32
    )
    assert loose.passed, loose.table()
    assert loose["params_match_reference"].threshold == default_tol(torch.float32)
    assert "eps of float32" in loose["params_match_reference"].detail
