"""Regression tests for the hardening QA pass (issue 9): other members of each defect class.

Optimizers: a commit that could fail half-way or write Inf, the eps floor at huge eps, empty
matrices, a parameter listed twice, checkpoints with unusable tensors, duplicate ids, names
that do not match, Muon² state with a second moment of the other form, torch.optim.Muon
checkpoints.  Validation: configurations under which a check cannot fail.
"""

from __future__ import annotations

import copy

import pytest
import torch

import matfun.optim as mo
from matfun import testing

CLASSES = [
    (mo.Muon, {}),
    (mo.HiMuon, {"tile": 4}),
    (mo.Muon2, {}),
    (mo.Muon2, {"factorized": True}),
    (mo.Muon2, {"tile": 4}),
]
IDS = ["Muon", "HiMuon", "Muon2", "Muon2F", "Muon2-tiled"]


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(8, 6, generator=g, dtype=dtype)),
        torch.nn.Parameter(torch.randn(5, 4, generator=g, dtype=dtype)),
    ]


def _grads(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def _trained(cls, kw, params=None):
    params = _params() if params is None else params
    opt = cls(params, lr=0.02, **kw)
    tensors = [p[1] if isinstance(p, tuple) else p for p in params]  # (name, parameter) pairs too
    for seed in (1, 2):
        _grads(tensors, seed)
        opt.step()
    return opt, tensors


def _snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def _assert_unchanged(opt, params, snap):
    weights, sd = snap
    assert all(torch.equal(p, w) for p, w in zip(params, weights))
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"]
    assert now["state"].keys() == sd["state"].keys()
    for k, st in sd["state"].items():
        assert now["state"][k].keys() == st.keys()
        assert all(torch.equal(now["state"][k][key], v) for key, v in st.items())


# --------------------------------------------------------------------------- the commit's scalars


@pytest.mark.parametrize("cls,kw", CLASSES, ids=IDS)
@pytest.mark.parametrize("edit", [{"lr": 1e308}, {"lr": 1e38, "weight_decay": 10.0}], ids=["lr", "decay"])
def test_a_step_size_or_decay_that_overflows_is_rejected_before_anything_changes(cls, kw, edit):
    # lr = 1e308 passed validation, then lr·√(H/W) overflowed inside the commit: weights already
    # decayed and momenta written, then "value cannot be converted to type float"; a decay factor
    # 1 − lr·λ beyond float32 made every weight Inf with no error
    opt, params = _trained(cls, kw)
    opt.param_groups[0].update(edit)
    _grads(params, 3)
    snap = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"not finite in torch.float32.*nothing was updated"):
        opt.step()
    _assert_unchanged(opt, params, snap)


def test_muon_eps_floor_stays_finite_for_huge_eps():
    # the floor ran the map on [[U, 0], [0, √(eps² − ‖U‖²)]]; eps² overflowed for eps > 1e154 and
    # the weights became NaN.  U / max(‖U‖, eps) with eps huge is ~0: the step is (almost) pure decay.
    for eps in (1e200, 1e308):
        params = _params(torch.float64)
        opt = mo.Muon(params, lr=0.02, eps=eps, weight_decay=0.0)
        before = [p.detach().clone() for p in params]
        _grads(params)
        opt.step()
        for p, b in zip(params, before):
            assert torch.isfinite(p).all()
            # NS of a matrix of norm ‖U‖/eps grows it at most by a^K ≈ 3.4445^5 ≈ 485
            assert (p - b).abs().max() <= 0.02 * 1.3 * 485 * p.grad.norm() / eps
    # and at ordinary eps the scaled floor is still the floor: ‖U‖ < eps ⇒ the update is NS(U/eps)
    p = torch.nn.Parameter(torch.zeros(4, 3, dtype=torch.float64))
    p.grad = torch.full((4, 3), 1e-9, dtype=torch.float64)
    opt = mo.Muon([p], lr=1.0, eps=1e-7, weight_decay=0.0, momentum=0.0, nesterov=False, precision="float64")
    opt.step()
    aug = torch.zeros(5, 4, dtype=torch.float64)
    aug[:4, :3] = p.grad
    aug[4, 3] = (1e-14 - p.grad.norm() ** 2).sqrt()
    expected = -__import__("matfun").newton_schulz(aug, 5, "jordan", "float64")[:4, :3] * (4 / 3) ** 0.5
    torch.testing.assert_close(p.detach(), expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("cls,kw", CLASSES, ids=IDS)
def test_a_schedule_whose_iterates_overflow_is_rejected(cls, kw):
    # finite coefficients (1e30, 0, 0) passed validation and every weight became NaN, silently
    with pytest.raises(ValueError, match="grow singular values to 1e\\+30"):
        cls(_params(), ns_coefficients=(1e30, 0.0, 0.0), **kw)
    opt, params = _trained(cls, kw)
    opt.param_groups[0]["ns_coefficients"] = [(3.0, 0.0, 0.0)]  # 3^16 ≈ 4.3e7 after 16 steps
    opt.param_groups[0]["ns_steps"] = 16
    _grads(params, 3)
    snap = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"param group 0: .*would overflow"):
        opt.step()
    _assert_unchanged(opt, params, snap)
    opt.param_groups[0]["ns_steps"] = 14  # 3^14 ≈ 4.8e6: allowed, and the step is finite
    opt.step()
    assert all(torch.isfinite(p).all() for p in params)


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("cls,kw", CLASSES, ids=IDS)
def test_empty_matrices_are_left_alone(cls, kw):
    # a 5×0 matrix gave ZeroDivisionError (Muon, Muon²) or "tile sizes must be positive" (HiMuon)
    empties = [
        torch.nn.Parameter(torch.zeros(5, 0)),
        torch.nn.Parameter(torch.zeros(0, 5)),
        torch.nn.Parameter(torch.zeros(4, 0, 3, 3)),
    ]
    params = _params() + empties
    opt = cls(params, lr=0.02, **kw)
    _grads(params)
    opt.step()
    assert all(e.shape == e.grad.shape for e in empties)
    assert len(opt.state) == 2  # the two non-empty matrices


@pytest.mark.parametrize("cls,kw", CLASSES, ids=IDS)
def test_a_parameter_listed_twice_in_a_group_is_rejected(cls, kw):
    # torch only warns, and the parameter then took two steps per step
    p, q = _params()
    with pytest.warns(UserWarning, match="duplicate"), pytest.raises(ValueError, match="appears twice"):
        cls([p, q, p], **kw)
    opt = cls([q], **kw)
    with pytest.warns(UserWarning, match="duplicate"), pytest.raises(ValueError, match="appears twice"):
        opt.add_param_group({"params": [p, p]})
    assert len(opt.param_groups) == 1


# --------------------------------------------------------------------------- checkpoints


def _first(sd):
    return sd["state"][next(iter(sd["state"]))]


EDITS = {
    "meta tensor": (
        lambda sd: _first(sd).update(momentum_buffer=_first(sd)["momentum_buffer"].to("meta")),
        "dense floating tensor",
    ),
    "sparse tensor": (
        lambda sd: _first(sd).update(momentum_buffer=_first(sd)["momentum_buffer"].to_sparse()),
        "dense floating tensor",
    ),
    "state is a list": (lambda sd: sd.update(state=[1, 2]), "'state' must be a dict"),
    "an id twice": (
        lambda sd: sd["param_groups"][0].update(params=[sd["param_groups"][0]["params"][0]] * 2),
        "parameter id twice",
    ),
    "names of another length": (lambda sd: sd["param_groups"][0].update(param_names=["a"]), "one name per parameter"),
    "other names": (lambda sd: sd["param_groups"][0].update(param_names=["b", "a"]), "parameter 0 is 'a' here but 'b'"),
}


@pytest.mark.parametrize("cls,kw", CLASSES, ids=IDS)
@pytest.mark.parametrize("edit", list(EDITS))
def test_unusable_checkpoints_are_rejected_with_a_message(cls, kw, edit):
    fn, match = EDITS[edit]
    saved = _trained(cls, kw, list(zip("ab", _params())))[0].state_dict()
    fn(saved)
    opt, params = _trained(cls, kw, list(zip("ab", _params(seed=5))))
    snap = _snapshot(opt, params)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(saved)
    _assert_unchanged(opt, params, snap)


def test_muon2_state_with_both_forms_or_no_second_moment_is_rejected():
    for drop, match in ((None, "both the full and the factorized"), ("exp_avg_sq", "lacks the second moment")):
        opt, _ = _trained(mo.Muon2, {})
        saved = opt.state_dict()
        st = _first(saved)
        st["exp_avg_sq_row"], st["exp_avg_sq_col"] = torch.ones(8), torch.ones(6)
        if drop:
            st.pop(drop), st.pop("exp_avg_sq_row"), st.pop("exp_avg_sq_col")
        with pytest.raises(ValueError, match=match):
            _trained(mo.Muon2, {})[0].load_state_dict(saved)


def test_muon2_switching_factorized_restarts_the_second_moment_and_drops_the_other_form():
    opt, params = _trained(mo.Muon2, {})
    opt.param_groups[0]["factorized"] = True
    _grads(params, 3)
    opt.step()
    assert set(opt.state[params[0]]) == {"momentum_buffer", "exp_avg_sq_row", "exp_avg_sq_col"}
    # the switch is one configuration change: what it saves loads back
    mo.Muon2(_params(), factorized=True).load_state_dict(opt.state_dict())


def test_torch_muon_checkpoint_loads_into_muon():
    # Muon is a drop-in for torch.optim.Muon: its checkpoints load, matfun's own hyperparameters
    # (precision, check_finite) from the constructor
    ref_params = _params()
    ref = torch.optim.Muon(ref_params, lr=0.03, weight_decay=0.05, momentum=0.9)
    _grads(ref_params)
    ref.step()
    params = [torch.nn.Parameter(p.detach().clone()) for p in ref_params]
    opt = mo.Muon(params, precision="float64", check_finite=False)
    opt.load_state_dict(ref.state_dict())
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["momentum"]) == (0.03, 0.05, 0.9)
    assert (group["precision"], group["check_finite"]) == ("float64", False)
    for p, r in zip(params, ref_params):
        assert torch.equal(opt.state[p]["momentum_buffer"], ref.state[r]["momentum_buffer"])
    _grads(params, 2)
    opt.step()  # it trains on
    # foreign classes are still rejected
    with pytest.raises(ValueError, match="another optimizer class"):
        mo.HiMuon(_params()).load_state_dict(ref.state_dict())


# --------------------------------------------------------------------------- validation that cannot fail


def _identity(X):
    return X


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"skip": testing.CHECK_NAMES}, "leaves no check"),
        ({"skip": [c for c in testing.CHECK_NAMES if c != "schedule_agreement"]}, "leaves no check"),
        ({"min_alignment": -1.0}, r"min_alignment must lie in \(0, 1\]"),
        ({"min_alignment": 0.0}, r"min_alignment must lie in \(0, 1\]"),
        ({"min_alignment": float("nan")}, r"min_alignment must lie in \(0, 1\]"),
        ({"min_alignment": "high"}, "min_alignment must be a number"),
        ({"scale_tol": float("inf")}, "scale_tol must be a finite number"),
        ({"equivariance_tol": -1.0}, "equivariance_tol must be a finite number"),
        ({"schedule": "jordan", "schedule_tol": float("inf")}, "schedule_tol must be a finite number"),
        ({"schedule": "jordan", "coefficient_tol": float("nan")}, "coefficient_tol must be a finite number"),
        ({"scales": (1.0,)}, "scales must be finite positive factors other than 1"),
        ({"scales": ()}, "scales must be finite positive factors other than 1"),
        ({"scales": (0.0, 10.0)}, "scales must be finite positive factors other than 1"),
        ({"schedule": "jordan", "steps": -1}, "steps must be a non-negative integer"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"device": "meta"}, "device 'meta' holds no values"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_settings_under_which_a_check_cannot_fail_are_rejected(kwargs, match):
    # each of these made the identity map (no orthogonaliser at all) pass the checks left, or
    # ended in a library error: skipping every check gave "PASSED: all 0 checks" and exit 0
    with pytest.raises((ValueError, TypeError), match=match):
        testing.check_orthogonalizer(_identity, timeout=None, **kwargs)


def test_skip_accepts_one_name():
    report = testing.check_orthogonalizer(_identity, timeout=None, skip="alignment")
    assert "alignment" not in {c.name for c in report.checks} and not report.passed


def test_validate_command_with_every_check_skipped_exits_2(capsys):
    from diagnostics.cli import main

    code = main(["validate", "math:sqrt", "--skip", *testing.CHECK_NAMES])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "leaves no check to run" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- check_sharded_optimizer


class _Biased(torch.nn.Module):
    """Linear layers with biases (1-D parameters), float64, 10 rows: uneven on 4 ranks."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 10, dtype=torch.float64)
        self.fc2 = torch.nn.Linear(10, 4, dtype=torch.float64)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _biased():
    return _Biased()


def _biased_elsewhere():
    """Other weights in the ranks than in the reference: breaks model_fn's contract."""
    model = _Biased()
    if torch.distributed.is_initialized():
        with torch.no_grad():
            model.fc1.weight.mul_(2)
    return model


def _muon_and_adamw(params):
    """The usual split: Muon for the matrices, AdamW for the biases."""
    return [
        mo.Muon([p for p in params if p.ndim >= 2], lr=0.02, precision="float64"),
        torch.optim.AdamW([p for p in params if p.ndim < 2], lr=1e-2),
    ]


def _frozen(params):
    return torch.optim.SGD(params, lr=0.0)


def _not_an_optimizer(params):
    return {"params": params}


def test_sharded_check_takes_a_muon_adamw_split_and_blames_model_fn_not_the_optimizer():
    # a model with biases could not be checked at all: optimizer_fn had to return ONE optimizer and
    # Muon rejects vectors; and a model_fn with other weights in the ranks failed
    # params_match_reference as if the optimizer were wrong
    from matfun.testing import check_sharded_optimizer

    good = check_sharded_optimizer(_biased, _muon_and_adamw, world_size=2, steps=2)
    assert good.passed, good.table()
    bad = check_sharded_optimizer(_biased_elsewhere, _muon_and_adamw, world_size=2, steps=1)
    assert bad.failed_names == ["params_match_reference"]
    assert "model_fn() gave other initial weights" in bad["params_match_reference"].detail


def test_sharded_check_does_not_pass_when_the_reference_does_not_move():
    from matfun.testing import check_sharded_optimizer

    report = check_sharded_optimizer(_biased, _frozen, world_size=2, steps=1)  # decided before any spawn
    assert not report.passed and "changed no parameter" in report["params_match_reference"].detail
    with pytest.raises(TypeError, match=r"must return a torch.optim.Optimizer or a list"):
        check_sharded_optimizer(_biased, _not_an_optimizer, world_size=2, steps=1)


# --------------------------------------------------------------------------- sweeps on a cluster


@pytest.mark.parametrize("address", ["nonsense", "", "tcp://"])
def test_malformed_scheduler_address_is_one_line_and_exit_2(tmp_path, capsys, address):
    # distributed raises ValueError("missing port number ...") for these: it was a traceback, exit 1
    from diagnostics.cli import main

    code = main(["run", "ns_convergence", "--quick", "--no-progress", "--out", str(tmp_path), "--scheduler", address])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "scheduler" in err, err


def test_jobs_never_starts_more_workers_than_cells(monkeypatch):
    # --jobs 99999999999 asked LocalCluster for that many processes: the command hung
    from diagnostics import parallel

    asked = []

    def fake_open_client(jobs, scheduler):
        asked.append(jobs)
        raise parallel.ParallelError("stop here")

    monkeypatch.setattr(parallel, "open_client", fake_open_client)
    todo = [({"n": k}, {"n": k}, f"d{k}") for k in range(3)]
    with pytest.raises(parallel.ParallelError):
        parallel.compute_cells(None, None, todo, None, {}, "cpu", 0, jobs=99999999999)
    assert asked == [3]
