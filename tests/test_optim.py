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
    # wide (16×32), tall (48×16: "original" lr factor √3) and wide (8×48) matrices
    layers = [
        torch.nn.Linear(32, 16, bias=False),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 48, bias=False),
        torch.nn.Tanh(),
        torch.nn.Linear(48, 8, bias=False),
    ]
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
    ulp (2⁻⁸ relative), which five Jordan steps carry into a few per cent
    relative difference per update, the same size as the bf16-vs-float32
    distance.  Measured on this model (relative difference of the displacement
    θ_t − θ₀, worst parameter, steps 1–5): 2.0–3.4% (ours in float32 vs torch:
    3.1–5.0%).  We allow 6%.  Bugs measured the same way: wrong lr adjustment
    72–84%, Polar Express coefficients 16–38%, no Nesterov 8–36%, no weight
    decay 7–10% (the last only from step 2 on).
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
    assert worst < 0.06, worst


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
    opt = mo.Muon(
        ps, lr=0.05, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust, precision="float32"
    )
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


# --------------------------------------------------------------------------- HiMuon


def test_himuon_large_tile_equals_muon():
    """A tile ≥ every parameter (or tile=None) is full NS; HiMuon's lr scale 0.2·√max(Th, Tw)
    on the effective tile is then Muon's "match_rms_adamw" on the matrix, so the runs agree
    (Muon with eps=0: HiMuon has no normalisation floor)."""
    data = batches(4)
    ref_model = make_model()
    ref = train(ref_model, mo.Muon(ref_model.parameters(), lr=0.02, adjust_lr_fn="match_rms_adamw", eps=0.0), data)
    for tile in (64, (50, 49), None, [(0, None)]):
        model = make_model()
        out = train(model, mo.HiMuon(model.parameters(), lr=0.02, tile=tile), data)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_himuon_batched_equals_per_parameter():
    """One tiled_newton_schulz_many call per step equals per-parameter tiled NS."""
    g = torch.Generator().manual_seed(7)
    shapes = [(16, 32), (24, 8), (8, 3, 3, 3), (16, 32)]  # a conv kernel too, and a repeated shape
    params = [torch.randn(s, generator=g) for s in shapes]
    grads_seq = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    T, lr, wd, mu = 8, 0.03, 0.1, 0.9
    ps = [p.clone().requires_grad_(True) for p in params]
    opt = mo.HiMuon(ps, lr=lr, weight_decay=wd, momentum=mu, tile=T, memory_budget=4096)
    ref = [p.clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for grads in grads_seq:
        for p, gr in zip(ps, grads):
            p.grad = gr.clone()
        opt.step()
        for i, gr in enumerate(grads):
            bufs[i] = bufs[i].lerp(gr, 1 - mu)
            u = gr.lerp(bufs[i], mu).reshape(shapes[i][0], -1)
            o = matfun.tiled_newton_schulz(u, T, 5, "jordan", "float32")
            H, W = u.shape
            scale = 0.2 * math.sqrt(max(min(T, H), min(T, W)))
            ref[i] = ref[i] * (1 - lr * wd) - lr * scale * o.reshape(shapes[i])
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-6)


def test_himuon_calls_many_once_per_step(monkeypatch):
    calls = []
    real = matfun.tiled_newton_schulz_many

    def spy(mats, tile, *args, **kwargs):
        calls.append((len(mats), tile, kwargs.get("memory_budget")))
        return real(mats, tile, *args, **kwargs)

    monkeypatch.setattr(matfun, "tiled_newton_schulz_many", spy)
    model = make_model()
    train(model, mo.HiMuon(model.parameters(), tile=8, memory_budget=1 << 16), batches(2))
    assert calls == [(3, (8, 8), 1 << 16)] * 2


def test_himuon_tile_schedule_switches_at_the_right_step(monkeypatch):
    seen = []
    real = matfun.tiled_newton_schulz_many

    def spy(mats, tile, *args, **kwargs):
        seen.append(tile)
        return real(mats, tile, *args, **kwargs)

    monkeypatch.setattr(matfun, "tiled_newton_schulz_many", spy)
    model = make_model()
    opt = mo.HiMuon(model.parameters(), tile=[(0, None), (3, 8), (5, (4, 16))])
    assert opt.current_tile() is None
    train(model, opt, batches(6))
    # full matrices (tile = largest dims, 48 × 48) for steps 0–2, T=8 for 3–4, (4, 16) from 5
    assert seen == [(48, 48)] * 3 + [(8, 8)] * 2 + [(4, 16)]
    assert opt.current_tile() == (4, 16)
    opt.set_tile(lambda step: 4 if step % 2 else None)
    assert opt.current_tile() is None  # step 6: even
    seen.clear()
    train(model, opt, batches(2))
    assert seen == [(48, 48), (4, 4)]  # step 6 even → full, step 7 odd → T=4
    opt.param_groups[0]["tile"] = 2
    assert opt.current_tile() == (2, 2)
    with pytest.raises(ValueError):
        opt.set_tile([(1, 8)])  # must start at step 0


# --------------------------------------------------------------------------- Muon2


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon2_first_step_closed_form(nesterov):
    """β₂ = 0, zero momentum: V₁ = G⊙G, the update is NS(G ⊘ (|G| + ε)) (M₁ ∝ G)."""
    g = torch.Generator().manual_seed(11)
    G = torch.randn(16, 32, generator=g, dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(16, 32, dtype=torch.float64))
    eps = 1e-3
    opt = mo.Muon2([p], lr=1.0, weight_decay=0.0, beta2=0.0, eps=eps, nesterov=nesterov, precision="float64")
    p.grad = G.clone()
    opt.step()
    expected = matfun.newton_schulz(G / (G.abs() + eps), 5, "jordan", "float64")
    torch.testing.assert_close(-p.detach(), expected, rtol=1e-10, atol=1e-12)


def test_muon2_recurrences_full_factorized_tiled():
    g = torch.Generator().manual_seed(12)
    shape = (12, 20)
    p0 = torch.randn(shape, generator=g)
    grads_seq = [torch.randn(shape, generator=g) for _ in range(3)]
    for factorized in (False, True):
        for tile in (None, 8):
            p = p0.clone().requires_grad_(True)
            opt = mo.Muon2(
                [p],
                lr=0.05,
                momentum=0.9,
                beta2=0.9,
                eps=1e-8,
                factorized=factorized,
                tile=tile,
                ns_steps=3,
                adjust_lr_fn="match_rms_adamw",
            )
            ref, B, V, r, c = p0.clone(), torch.zeros(shape), torch.zeros(shape), torch.zeros(12), torch.zeros(20)
            for G in grads_seq:
                p.grad = G.clone()
                opt.step()
                B = 0.9 * B + 0.1 * G
                M = 0.1 * G + 0.9 * B
                if factorized:
                    r, c = 0.9 * r + 0.1 * (G * G).sum(1), 0.9 * c + 0.1 * (G * G).sum(0)
                    Vh = torch.outer(r, c) / c.sum()
                else:
                    V = 0.9 * V + 0.1 * G * G
                    Vh = V
                X = M / (Vh.sqrt() + 1e-8)
                O = matfun.newton_schulz(X, 3) if tile is None else matfun.tiled_newton_schulz(X, tile, 3)
                scale = 0.2 * math.sqrt(20 if tile is None else 8)
                ref = ref * (1 - 0.05 * 0.1) - 0.05 * scale * O
            torch.testing.assert_close(p.detach(), ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- all three


OPTIMIZERS = [
    (mo.Muon, {}),
    (mo.HiMuon, {"tile": 8}),
    (mo.HiMuon, {"tile": [(0, None), (2, 8)]}),
    (mo.Muon2, {}),
    (mo.Muon2, {"factorized": True, "tile": (4, 8)}),
]


def conv_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, bias=False),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 4, bias=False),
    )


def conv_train(model, opt, n, seed=2):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x, y = torch.randn(16, 3, 6, 6, generator=g), torch.randn(16, 4, generator=g)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("cls,kw", OPTIMIZERS)
def test_state_dict_round_trip_is_bit_exact(cls, kw):
    """Train N steps, checkpoint, continue M steps == load into fresh objects and continue."""
    model = conv_model()
    opt = cls(model.parameters(), lr=0.02, **kw)
    conv_train(model, opt, 2, seed=2)
    model_ckpt = copy.deepcopy(model.state_dict())
    opt_ckpt = copy.deepcopy(opt.state_dict())
    conv_train(model, opt, 3, seed=3)

    fresh = conv_model(seed=99)
    fresh.load_state_dict(model_ckpt)
    opt2 = cls(fresh.parameters(), lr=0.5, **kw)  # hyperparameters come from the checkpoint
    opt2.load_state_dict(opt_ckpt)
    conv_train(fresh, opt2, 3, seed=3)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls,kw", OPTIMIZERS)
def test_conv_kernels_are_flattened(cls, kw):
    model = conv_model()
    w = model[0].weight
    opt = cls([w], lr=0.02, weight_decay=0.0, momentum=0.0, nesterov=False, precision="float64", **kw)
    w.grad = torch.randn_like(w)
    before = w.detach().clone()
    opt.step()
    assert w.shape == (8, 3, 3, 3)
    if cls is mo.Muon:
        O = matfun.newton_schulz(w.grad.reshape(8, 27).double(), 5).float()
        torch.testing.assert_close((before - w.detach()).reshape(8, 27), 0.02 * O, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,kw", OPTIMIZERS)
def test_rejections(cls, kw):
    model = make_model()
    bias = torch.nn.Parameter(torch.zeros(5))
    with pytest.raises(ValueError, match="AdamW"):
        cls([bias], **kw)
    with pytest.raises(ValueError, match="AdamW"):
        cls([{"params": list(model.parameters())}, {"params": [bias]}], **kw)
    params = list(model.parameters())
    for bad in (
        {"lr": -1.0},
        {"momentum": 1.0},
        {"momentum": -0.1},
        {"weight_decay": -1.0},
        {"adjust_lr_fn": "sqrt"},
        {"ns_steps": -1},
        {"precision": "fp8"},
        {"ns_coefficients": "nope"},
    ):
        with pytest.raises((ValueError, TypeError)):
            cls(params, **{**kw, **bad})
    with pytest.raises(ValueError):
        cls([{"params": params, "lr": -0.1}], **kw)
    with pytest.raises(ValueError, match="aliases"):
        cls(params, ns_steps=5, steps=3, **kw)
    with pytest.raises(ValueError):
        cls([torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64))], **kw)


@pytest.mark.parametrize("bad_tile", [0, -4, (8,), (8, 0), "big", 2.5, [(0, 8), (0, 4)], [(5, 8)], [(0, -1)]])
@pytest.mark.parametrize("cls", [mo.HiMuon, mo.Muon2])
def test_bad_tiles_raise(cls, bad_tile):
    with pytest.raises(ValueError):
        cls(make_model().parameters(), tile=bad_tile)


def test_bad_tile_from_callable_raises_at_step():
    model = make_model()
    opt = mo.HiMuon(model.parameters(), tile=lambda step: -1)
    with pytest.raises(ValueError):
        train(model, opt, batches(1))


@pytest.mark.parametrize("cls,kw", OPTIMIZERS)
def test_nan_gradient_is_rejected_with_its_name(cls, kw):
    model = make_model()
    opt = cls(model.named_parameters(), lr=0.02, **kw)
    train(model, opt, batches(1))
    snapshot = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model[4].weight.grad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'4\.weight'.*NaN"):
        opt.step()
    for a, b in zip(model.parameters(), snapshot):
        assert torch.equal(a, b)  # nothing updated
    for v_new, v_old in zip(opt.state_dict()["state"].values(), state["state"].values()):
        for k in v_old:
            assert torch.equal(v_new[k], v_old[k])
    # unnamed parameters: "param_groups[i][j]"
    opt = cls(model.parameters(), **kw)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model[0].weight.grad[1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"param_groups\[0\]\[0\]"):
        opt.step()


@pytest.mark.parametrize("cls,kw", OPTIMIZERS)
def test_sparse_gradient_and_closure(cls, kw):
    model = make_model()
    opt = cls(model.parameters(), **kw)
    x, y = batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss.ndim == 0
    w = model[0].weight
    w.grad = torch.randn_like(w).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
