"""Tests of matfun.optim: Muon, HiMuon, Muon2 (tiny models: CPU bf16 matmuls are slow)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import matfun
import matfun.optim as mo

JORDAN = (3.4445, -4.7750, 2.0315)


def make_model(seed: int = 0, conv: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(32, 16, bias=False), torch.nn.Tanh(), torch.nn.Linear(16, 8, bias=False)]
    return torch.nn.Sequential(*layers)


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(64, 32, generator=g), torch.randn(64, 8, generator=g)) for _ in range(n)]


def train(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------- Muon


def test_muon_bf16_follows_torch_muon():
    """matfun's Muon(precision="bfloat16") against torch.optim.Muon, step for step.

    Tolerance: both run the same bf16 products (checked by hand: started from
    torch's X₀ the five iterations are bit-identical); they differ only in the
    initial normalisation — torch divides by a bf16-rounded norm in bf16, matfun
    normalises in float32 and rounds once.  That perturbs X₀ by up to one bf16
    ulp (2⁻⁸ relative), which five Jordan steps carry into ~1–2% relative
    difference per update, the same size as the bf16-vs-float32 distance.
    Measured here: ≤ ~1% relative difference of the displacement θ_t − θ₀ over
    5 steps; we allow 5%.  A real bug (wrong lr adjustment, decay, momentum or
    Nesterov) shows up as ≥ 10%.
    """
    data = batches(5)
    m_ref, m_new = make_model(), make_model()
    p0 = [p.detach().clone() for p in m_ref.parameters()]
    o_ref = torch.optim.Muon(m_ref.parameters(), lr=0.02)
    o_new = mo.Muon(m_new.parameters(), lr=0.02, precision="bfloat16", coefficients="jordan")
    worst = 0.0
    for x, y in data:
        train(m_ref, o_ref, [(x, y)])
        train(m_new, o_new, [(x, y)])
        for pr, pn, q in zip(m_ref.parameters(), m_new.parameters(), p0):
            worst = max(worst, rel(pn.detach() - q, pr.detach() - q))
    assert worst < 0.05, worst


def reference_muon_fp32(params, grads_seq, lr, wd, mu, nesterov, steps, coeffs, adjust):
    """Hand-written float32 Muon: torch.optim.Muon's recurrences with float32 NS."""
    params = [p.clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    a, b, c = coeffs
    for grads in grads_seq:
        for i, (p, g) in enumerate(zip(params, grads)):
            bufs[i] = mu * bufs[i] + (1 - mu) * g
            u = (1 - mu) * g + mu * bufs[i] if nesterov else bufs[i]
            X = u.T if u.shape[0] > u.shape[1] else u
            X = X / X.norm()
            for _ in range(steps):
                A = X @ X.T
                X = a * X + (b * A + c * A @ A) @ X
            X = X.T if u.shape[0] > u.shape[1] else X
            A_, B_ = p.shape
            scale = math.sqrt(max(1, A_ / B_)) if adjust == "original" else 0.2 * math.sqrt(max(A_, B_))
            params[i] = p * (1 - lr * wd) - lr * scale * X
    return params


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_muon_fp32_matches_reference(nesterov, adjust):
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(16, 32, generator=g), torch.randn(24, 8, generator=g)]
    grads_seq = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(4)]
    ref = reference_muon_fp32(params, grads_seq, 0.05, 0.1, 0.9, nesterov, 5, JORDAN, adjust)
    ps = [p.clone().requires_grad_(True) for p in params]
    opt = mo.Muon(ps, lr=0.05, weight_decay=0.1, momentum=0.9, nesterov=nesterov,
                  adjust_lr_fn=adjust, precision="float32")
    for grads in grads_seq:
        for p, gr in zip(ps, grads):
            p.grad = gr.clone()
        opt.step()
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-5)


def test_muon_defaults_follow_torch():
    p = torch.nn.Parameter(torch.randn(8, 4))
    ours, theirs = mo.Muon([p]).defaults, torch.optim.Muon([p]).defaults
    for key in ("lr", "weight_decay", "momentum", "nesterov", "eps", "ns_steps", "adjust_lr_fn"):
        assert ours[key] == theirs[key], key
    assert tuple(ours["ns_coefficients"]) == tuple(theirs["ns_coefficients"])


def test_muon_eps_floor_matches_torch_semantics():
    """‖U‖ < eps: the map sees U/eps (torch's clamp), applied exactly by block padding."""
    g = torch.Generator().manual_seed(5)
    G = torch.randn(6, 10, generator=g, dtype=torch.float64)
    G = G / G.norm() * 1e-9  # ‖U‖ = 1e-9 < eps = 1e-7
    p = torch.nn.Parameter(torch.zeros(6, 10, dtype=torch.float64))
    opt = mo.Muon([p], lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False, precision="float64")
    p.grad = G.clone()
    opt.step()
    X = G / 1e-7
    a, b, c = JORDAN
    for _ in range(5):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    torch.testing.assert_close(-p.detach(), X, rtol=1e-10, atol=1e-14)
