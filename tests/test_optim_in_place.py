"""The step's memory discipline: statistics updated in place (bit for bit what the plan computed),
loaded states copied, aliasing gradients read as they were, Muon²'s second moment as torch's Adam."""

from __future__ import annotations

import copy

import pytest
import torch

import matfun.optim as mo
from matfun.newton_schulz import normalize
from matfun.optim.muon2 import _quotient

OPTIMIZERS = [(mo.Muon, {}), (mo.HiMuon, {"tile": 8}), (mo.Muon2, {}), (mo.Muon2, {"factorized": True})]
IDS = ["Muon", "HiMuon", "Muon2", "Muon2-F"]


def _params(seed=0, shapes=((16, 24), (24, 16), (8, 8))):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=IDS)
def test_momentum_is_the_same_tensor_updated_bit_for_bit(cls, kw):
    """After the first step the momentum buffer is updated in place (as torch.optim.Muon does), and
    holds exactly ``B.lerp(g, 1 − μ)``: the plan's out-of-place value and the commit's in-place one agree."""
    params = _params()
    opt = cls(params, lr=0.02, momentum=0.9, **kw)
    _grads(params, 1)
    opt.step()
    for step in (2, 3):
        _grads(params, step)
        before = {p: opt.state[p]["momentum_buffer"] for p in params}
        expected = {p: before[p].clone().lerp(p.grad, 0.1) for p in params}
        opt.step()
        for p in params:
            assert opt.state[p]["momentum_buffer"] is before[p]
            assert torch.equal(before[p], expected[p])


def test_momentum_matches_torch_muon_bit_for_bit():
    ours, theirs = _params(), _params()
    a = mo.Muon(ours, lr=0.02, momentum=0.95)
    b = torch.optim.Muon(theirs, lr=0.02, momentum=0.95)
    for step in range(3):
        _grads(ours, step)
        _grads(theirs, step)
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"])


@pytest.mark.parametrize("dtype,precision", [(torch.float32, None), (torch.float64, "float32")])
def test_muon2_second_moment_is_torch_adams_exp_avg_sq_bit_for_bit(dtype, precision):
    """Also when the map computes in a narrower dtype than the statistics (float64 parameters,
    float32 map): forming the quotient must not touch the second moment it reads."""
    ours, theirs = _params(), _params()
    for p in ours + theirs:
        p.data = p.data.to(dtype)
    a = mo.Muon2(ours, lr=0.02, beta2=0.95, precision=precision)
    b = torch.optim.Adam(theirs, lr=0.02, betas=(0.9, 0.95), foreach=False)
    for step in range(4):
        _grads(ours, step)
        _grads(theirs, step)
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(a.state[p]["exp_avg_sq"], b.state[q]["exp_avg_sq"])


@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=IDS)
def test_a_loaded_state_dict_is_copied_not_updated(cls, kw):
    params = _params()
    opt = cls(params, lr=0.02, **kw)
    _grads(params, 1)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    given = copy.deepcopy(saved)
    other = cls(_params(), lr=0.02, **kw)
    other.load_state_dict(given)
    _grads(other.param_groups[0]["params"], 2)
    other.step()
    for key, state in given["state"].items():
        for name, value in state.items():
            assert torch.equal(value, saved["state"][key][name]), name


@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=IDS)
def test_a_gradient_that_aliases_another_parameter_is_read_as_before_the_step(cls, kw):
    """Every statistic is written before any weight: parameter 1's gradient *is* parameter 0's
    storage, and the step equals the one with a copy of it as the gradient."""
    runs = []
    for alias in (True, False):
        params = _params(shapes=((16, 24), (16, 24)))
        opt = cls(params, lr=0.02, **kw)
        for step in range(3):
            _grads(params[:1], step)
            params[1].grad = params[0].detach() if alias else params[0].detach().clone()
            opt.step()
        runs.append([p.detach().clone() for p in params] + [v for p in params for v in opt.state[p].values()])
    for x, y in zip(*runs):
        assert torch.equal(x, y)


def test_quotient_without_the_power_of_two_scaling_normalises_bit_for_bit():
    """In float32's range the scaling pass is skipped: the normalised quotient is unchanged, bit for bit;
    out of that range (a tiny eps) the scaled form keeps it finite."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(2, 24, 40, generator=g)
    V = torch.rand(2, 24, 40, generator=g, dtype=torch.float32)
    fast = _quotient(X, V, 1e-8)
    scaled = torch.ldexp(fast, -torch.frexp(fast.abs().amax(dim=(-2, -1), keepdim=True))[1].double())
    assert torch.equal(normalize(fast.float()), normalize(scaled.float()))
    huge = _quotient(X * 1e30, torch.zeros_like(V), 1e-30)
    assert torch.isfinite(huge.float()).all() and huge.abs().amax() < 1
