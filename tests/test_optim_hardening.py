"""Regression tests for issue 9, items 2–5: matfun.optim never poisons its state, every step is all
or nothing, a rejected param group is not kept, and load_state_dict rejects what does not fit."""

from __future__ import annotations

import copy

import pytest
import torch

import matfun.optim as mo

ALL = [
    (mo.Muon, {}),
    (mo.HiMuon, {"tile": 8}),
    (mo.Muon2, {}),
    (mo.Muon2, {"factorized": True, "tile": (4, 8)}),
]
IDS = ["Muon", "HiMuon", "Muon2", "Muon2F-tiled"]


def two_group_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 24), (12, 8), (8, 20)]
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]


def set_grads(params, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = (scale * torch.randn(p.shape, generator=g)).to(p.dtype)


def snapshot(opt, params):
    """Everything a step may change: weights, per-parameter state, group hyperparameters."""
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params if p in opt.state}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return [p.detach().clone() for p in params], state, copy.deepcopy(groups)


def assert_unchanged(opt, params, snap):
    weights, state, groups = snap
    for p, w in zip(params, weights):
        assert torch.equal(p.detach(), w)  # bit-identical
    assert {id(p) for p in params if opt.state.get(p)} == set(state)
    for p in params:
        for k, v in state.get(id(p), {}).items():
            assert torch.equal(opt.state[p][k], v), k
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups


def make(cls, kw, params, **extra):
    """Two param groups: the first two parameters, then the last one."""
    return cls([{"params": params[:2]}, {"params": params[2:]}], **{"lr": 0.02, **kw, **extra})


# --------------------------------------------------------------------------- item 2: statistics


@pytest.mark.parametrize("cls,kw", ALL, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_statistics_accumulate_in_float32_or_wider(cls, kw, dtype):
    params = two_group_params(dtype)
    opt = make(cls, kw, params)
    for seed in (1, 2):
        set_grads(params, seed)
        opt.step()
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    for p in params:
        assert opt.state[p]["momentum_buffer"].dtype == wide
        for key in ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col"):
            if key in opt.state[p]:
                assert opt.state[p][key].dtype == wide
        assert p.dtype == dtype and torch.isfinite(p).all()


@pytest.mark.parametrize("factorized", [False, True])
def test_muon2_float16_gradient_above_256_does_not_overflow(factorized):
    """G⊙G of a float16 gradient entry of 300 overflows float16 (max 65504), not float32: the step
    equals the one of a float32 copy of the run (the update is rounded once to float16)."""
    g = torch.Generator().manual_seed(4)
    w32 = torch.randn(16, 24, generator=g)
    G = (300 * torch.randn(16, 24, generator=g)).half()  # finite in float16, |G| up to ~1000
    p16, p32 = torch.nn.Parameter(w32.half()), torch.nn.Parameter(w32.half().float())
    opts = [mo.Muon2([p], lr=0.02, factorized=factorized, weight_decay=0.0) for p in (p16, p32)]
    for _ in range(2):
        p16.grad, p32.grad = G.clone(), G.float()
        for opt in opts:
            opt.step()
    for key, v in opts[0].state[p16].items():
        assert torch.isfinite(v).all() and v.dtype == torch.float32
        torch.testing.assert_close(v, opts[1].state[p32][key], rtol=0, atol=0)
    # the float16 weights differ from float32 ones by float16 rounding of each step (2 steps)
    torch.testing.assert_close(p16.detach().float(), p32.detach(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("factorized,key", [(False, "exp_avg_sq"), (True, "exp_avg_sq_row")])
def test_second_moment_overflow_is_caught_before_anything_is_written(factorized, key):
    """A float32 gradient entry of 1e20 (finite) overflows G⊙G even in float32: the error names the
    parameter and the statistic, comes before any parameter was touched, and later steps work."""
    params = two_group_params()
    opt = mo.Muon2(list(zip(["a", "b", "last"], params)), lr=0.02, factorized=factorized)
    set_grads(params, 1)
    opt.step()
    set_grads(params, 2)
    params[2].grad[0, 0] = 1e20
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=rf"{key}.*'last'|'last'.*{key}"):
        opt.step()
    assert_unchanged(opt, params, snap)
    set_grads(params, 3)
    opt.step()  # the state was not poisoned
    assert all(torch.isfinite(v).all() for p in params for v in opt.state[p].values())


@pytest.mark.parametrize("cls,kw", ALL[:2], ids=IDS[:2])  # in Muon2, G⊙G overflows first (tested above)
def test_momentum_overflow_is_caught_before_anything_is_written(cls, kw):
    params = two_group_params()
    opt = make(cls, kw, params, momentum=0.5)
    for p in params:
        p.grad = torch.full_like(p, -3e38)
    opt.step()
    for p in params:
        p.grad = torch.full_like(p, 3e38)  # finite, but B + (g − B)/2 overflows: g − B = 6e38
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"momentum_buffer.*param_groups\[0\]\[0\]"):
        opt.step()
    assert_unchanged(opt, params, snap)


# --------------------------------------------------------------------------- item 3: all or nothing


def _raising_tile(step):
    raise RuntimeError("tile schedule service unavailable")


@pytest.mark.parametrize("cls", [mo.HiMuon, mo.Muon2])
def test_tile_callable_that_raises_in_second_group_changes_nothing(cls):
    params = two_group_params()
    flaky_tile = lambda s: 4 if s < 1 else _raising_tile(s)  # noqa: E731 - works at step 0, raises at step 1
    opt = cls([{"params": params[:2], "tile": 8}, {"params": params[2:], "tile": flaky_tile}])
    set_grads(params, 1)
    opt.step()
    set_grads(params, 2)
    snap = snapshot(opt, params)
    with pytest.raises(RuntimeError, match="unavailable") as info:
        opt.step()
    assert any("param group 1" in note for note in info.value.__notes__)
    assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("cls", [mo.HiMuon, mo.Muon2])
def test_bad_tile_from_callable_in_second_group_changes_nothing(cls):
    params = two_group_params()
    opt = cls([{"params": params[:2], "tile": 8}, {"params": params[2:], "tile": lambda s: -1}])
    set_grads(params, 1)
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match="param group 1: tile"):
        opt.step()
    assert_unchanged(opt, params, snap)
    assert opt.param_groups[0]["step_count"] == 0


@pytest.mark.parametrize("cls,kw", ALL, ids=IDS)
@pytest.mark.parametrize("bad", ["nan", "inf16"])
def test_non_finite_gradient_in_last_parameter_changes_nothing(cls, kw, bad):
    dtype = torch.float16 if bad == "inf16" else torch.float32
    params = two_group_params(dtype)
    opt = make(cls, kw, params)
    set_grads(params, 1)
    opt.step()
    set_grads(params, 2)
    if bad == "nan":
        params[2].grad[-1, -1] = float("nan")
    else:
        params[2].grad[0, 0] = 7e4  # overflows float16: the gradient itself is Inf
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\[0\].*NaN or Inf"):
        opt.step()
    assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("cls,kw", ALL, ids=IDS)
@pytest.mark.parametrize(
    "key,value,match",
    [
        ("lr", -1.0, "Learning rate"),
        ("momentum", 1.5, "momentum"),
        ("nesterov", "yes", "nesterov"),
        ("ns_steps", 0.5, "steps"),
    ],
)
def test_hyperparameter_edited_into_last_group_is_checked_at_step(cls, kw, key, value, match):
    params = two_group_params()
    opt = make(cls, kw, params)
    set_grads(params, 1)
    opt.step()
    opt.param_groups[1][key] = value
    set_grads(params, 2)
    snap = snapshot(opt, params)
    with pytest.raises((ValueError, TypeError), match=f"param group 1: .*{match}"):
        opt.step()
    assert_unchanged(opt, params, snap)


def test_muon2_zero_second_moment_with_eps_zero_changes_nothing():
    """eps = 0 and a zero entry of V: the second-moment check names the parameter, before any write."""
    params = two_group_params()
    opt = mo.Muon2([{"params": params[:2]}, {"params": params[2:]}], eps=0.0)
    set_grads(params, 1)
    params[2].grad[3, :] = 0.0  # first step: V = (1 − β₂) G⊙G has a zero row
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\[0\].*eps = 0"):
        opt.step()
    assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("cls,kw", ALL, ids=IDS)
def test_a_good_step_equals_the_step_of_separate_optimizers(cls, kw):
    """The two-phase step changes nothing in the maths: two groups in one optimizer step as two
    optimizers (one per group) do.  Bit-identical except for HiMuon, which batches the tiles of
    both groups into one call: batched products may round differently (float32 round-off)."""
    params = two_group_params()
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = make(cls, kw, params)
    singles = [cls(twins[:2], lr=0.02, **kw), cls(twins[2:], lr=0.02, **kw)]
    for seed in (1, 2, 3):
        set_grads(params, seed)
        set_grads(twins, seed)
        opt.step()
        for o in singles:
            o.step()
    for p, t in zip(params, twins):
        if cls is mo.HiMuon:
            torch.testing.assert_close(p, t, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(p, t)


# --------------------------------------------------------------------------- item 4: add_param_group


def _bad_groups():
    w = lambda: torch.nn.Parameter(torch.randn(6, 4))  # noqa: E731
    return {
        "1-D parameter": ({"params": [torch.nn.Parameter(torch.zeros(5))]}, "AdamW"),
        "lr=-1": ({"params": [w()], "lr": -1.0}, "Learning rate"),
        "lr as str": ({"params": [w()], "lr": "0.1"}, "Learning rate"),
        "momentum=1": ({"params": [w()], "momentum": 1.0}, "momentum"),
        "nesterov as str": ({"params": [w()], "nesterov": "yes"}, "nesterov"),
        "check_finite as int": ({"params": [w()], "check_finite": 1}, "check_finite"),
        "AdamW betas": ({"params": [w()], "betas": (0.9, 0.999)}, "betas"),
        "integer parameter": ({"params": [torch.zeros(3, 3, dtype=torch.int64)]}, "floating"),
    }


def _class_bad_groups(cls):
    w = torch.nn.Parameter(torch.randn(6, 4))
    out = {}
    if cls in (mo.HiMuon, mo.Muon2):
        out["tile=0"] = ({"params": [w], "tile": 0}, "tile")
        out["small_matrix"] = ({"params": [w], "small_matrix": "tiny"}, "small_matrix")
    if cls is mo.Muon2:
        out["beta2=1"] = ({"params": [w], "beta2": 1.0}, "beta2")
        out["beta2 as str"] = ({"params": [w], "beta2": "0.9"}, "beta2")
        out["factorized as str"] = ({"params": [w], "factorized": "no"}, "factorized")
    if cls is mo.HiMuon:
        out["eps (Muon's)"] = ({"params": [w], "eps": 1e-7}, "eps")
    return out


@pytest.mark.parametrize("cls,kw", ALL, ids=IDS)
def test_rejected_param_group_is_not_added(cls, kw):
    params = two_group_params()
    opt = cls(params[:2], lr=0.02, **kw)
    for label, (group, match) in {**_bad_groups(), **_class_bad_groups(cls)}.items():
        original = dict(group)
        with pytest.raises((ValueError, TypeError), match=match):
            opt.add_param_group(group)
        assert len(opt.param_groups) == 1, label
        assert group == original, label  # the caller's dict is left as it was
    # the optimizer still trains exactly its own group, and nothing else
    set_grads(params, 1)
    before = params[2].detach().clone()
    opt.step()
    assert torch.equal(params[2].detach(), before)
    assert set(opt.state) == set(params[:2])


@pytest.mark.parametrize("cls,kw", ALL, ids=IDS)
def test_constructor_rejects_a_bad_second_group(cls, kw):
    params = two_group_params()
    for _label, (group, match) in _bad_groups().items():
        with pytest.raises((ValueError, TypeError), match=match):
            cls([{"params": params[:2]}, group], **kw)


# --------------------------------------------------------------------------- item 5: load_state_dict


def trained(cls, kw, params=None, steps=2, **extra):
    params = two_group_params() if params is None else params
    opt = make(cls, kw, params, **extra)
    for seed in range(1, steps + 1):
        set_grads(params, seed)
        opt.step()
    return opt, params


@pytest.mark.parametrize(
    "source,target,match",
    [
        ((mo.Muon, {}), (mo.HiMuon, {"tile": 8}), r"lacks \[.*'tile'"),
        ((mo.HiMuon, {"tile": 8}), (mo.Muon, {}), r"lacks \['eps'\].*has \[.*'tile'"),
        ((mo.HiMuon, {"tile": 8}), (mo.Muon2, {}), r"lacks \['beta2', 'eps', 'factorized'\]"),
        ((mo.Muon2, {}), (mo.Muon, {}), r"has \['beta2', 'factorized', 'small_matrix', 'step_count', 'tile'\]"),
        ((mo.Muon2, {}), (mo.HiMuon, {}), r"lacks \['memory_budget'\]"),
    ],
)
def test_state_from_another_matfun_class_is_rejected(source, target, match):
    saved = trained(*source)[0].state_dict()
    opt, params = trained(*target)
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(saved)
    assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("cls,kw", ALL, ids=IDS)
def test_torch_adamw_and_muon_states_are_rejected(cls, kw):
    params = two_group_params()
    # Muon loads torch.optim.Muon's checkpoints (a drop-in; tests/test_hardening_qa.py)
    for other in (torch.optim.AdamW,) + (() if cls is mo.Muon else (torch.optim.Muon,)):
        ref = other([{"params": params[:2]}, {"params": params[2:]}], lr=0.02)
        set_grads(params, 1)
        ref.step()
        opt, _ = trained(cls, kw, [torch.nn.Parameter(p.detach().clone()) for p in params])
        snap = snapshot(opt, opt.param_groups[0]["params"] + opt.param_groups[1]["params"])
        with pytest.raises(ValueError, match="another optimizer class"):
            opt.load_state_dict(ref.state_dict())
        assert_unchanged(opt, opt.param_groups[0]["params"] + opt.param_groups[1]["params"], snap)


def _edit(state_dict, fn):
    sd = copy.deepcopy(state_dict)
    fn(sd)
    return sd


@pytest.mark.parametrize("cls,kw", ALL, ids=IDS)
def test_mismatching_state_dicts_are_rejected_at_load(cls, kw):
    opt, params = trained(cls, kw)
    good = copy.deepcopy(opt.state_dict())
    # another model: same parameter count, one shape differs
    other_params = two_group_params()
    other_params[1] = torch.nn.Parameter(torch.randn(8, 12))
    other, _ = trained(cls, kw, other_params)
    hyper = "tile" if "tile" in kw else "lr"
    cases = {
        "shape": (other.state_dict(), r"momentum_buffer.*param_groups\[0\]\[1\].*shape \(8, 12\).*\(12, 8\)"),
        "groups": (_edit(good, lambda sd: sd["param_groups"].pop()), "1 param groups.*this optimizer has 2"),
        "count": (_edit(good, lambda sd: sd["param_groups"][0]["params"].pop()), "group 0 has 1 parameters"),
        "missing key": (_edit(good, lambda sd: sd["param_groups"][1].pop(hyper)), rf"lacks \['{hyper}'\]"),
        "bad value": (_edit(good, lambda sd: sd["param_groups"][1].update(lr=-1.0)), "group 1.*Learning rate"),
        "nan state": (
            _edit(good, lambda sd: sd["state"][0]["momentum_buffer"].fill_(float("nan"))),
            "momentum_buffer.*NaN",
        ),
        "foreign state key": (_edit(good, lambda sd: sd["state"][0].update(exp_avg=torch.zeros(16, 24))), "exp_avg"),
        "unknown id": (_edit(good, lambda sd: sd["state"].update({99: {}})), "parameter id 99"),
        "not a state dict": ({"param_groups": []}, "'state' and 'param_groups'"),
    }
    if cls is mo.Muon2:  # (for Muon and HiMuon, an empty state is a parameter that never had a gradient)
        no_momentum = _edit(good, lambda sd: sd["state"][0].pop("momentum_buffer"))
        cases["no momentum"] = (no_momentum, "lacks 'momentum_buffer'")
    snap = snapshot(opt, params)
    for _label, (sd, match) in cases.items():
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        assert_unchanged(opt, params, snap)
    opt.load_state_dict(good)  # and the genuine one still loads


def test_muon2_half_factorized_state_is_rejected():
    opt, _params = trained(mo.Muon2, {"factorized": True})
    sd = _edit(opt.state_dict(), lambda sd: sd["state"][0].pop("exp_avg_sq_col"))
    with pytest.raises(ValueError, match="only one of"):
        opt.load_state_dict(sd)


@pytest.mark.parametrize("cls,kw", ALL, ids=IDS)
def test_bfloat16_round_trip_keeps_float32_statistics_bit_for_bit(cls, kw):
    """torch's loader would cast the statistics to the parameter dtype (bfloat16), so the resumed
    run would drift; ours keeps them in float32 and resumes bit-for-bit."""
    opt, params = trained(cls, kw, two_group_params(torch.bfloat16))
    weights = [p.detach().clone() for p in params]
    saved = copy.deepcopy(opt.state_dict())
    for seed in (5, 6):
        set_grads(params, seed)
        opt.step()
    twins = [torch.nn.Parameter(w.clone()) for w in weights]
    fresh = make(cls, kw, twins, lr=0.5)
    fresh.load_state_dict(saved)
    for p in twins:
        assert fresh.state[p]["momentum_buffer"].dtype == torch.float32
    for seed in (5, 6):
        set_grads(twins, seed)
        fresh.step()
    for p, t in zip(params, twins):
        assert torch.equal(p, t)


def test_v01_himuon_checkpoint_resumes_with_strict_tiling():
    """A checkpoint saved before ``small_matrix`` existed loads as ``"tile"`` (what that run did)."""
    opt, _params = trained(mo.HiMuon, {"tile": 8})
    sd = _edit(opt.state_dict(), lambda sd: [g.pop("small_matrix") for g in sd["param_groups"]])
    opt.load_state_dict(sd)
    assert [g["small_matrix"] for g in opt.param_groups] == ["tile", "tile"]
