"""Issue 10, items 2, 3, 5: HiMuon's small-matrix rule, the learning-rate rules, split_params and
the README's optimizer example (executed from README.md itself)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import matfun
import matfun.optim as mo

README = Path(__file__).resolve().parent.parent / "README.md"


def one_step(opt_cls, G, lr=0.02, **kw):
    """``θ₀ − θ₁`` after one step from θ₀ = 0 with gradient G: with momentum 0 and no weight decay
    that is ``AdjustLR(lr, ·) · map(G)``."""
    p = torch.nn.Parameter(torch.zeros_like(G))
    opt = opt_cls([p], lr=lr, momentum=0.0, nesterov=False, weight_decay=0.0, precision="float64", **kw)
    p.grad = G.clone()
    opt.step()
    return -p.detach()


def gaussian(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- 10.2 HiMuon small matrices


def test_himuon_small_matrix_gets_full_ns_and_its_own_lr_factor():
    """64×256 at T=128 (H·W = 128·128): the official rule runs one full NS and scales lr by
    0.2·√max(64, 256) = 3.20; strict tiling runs two 64×128 tiles with 0.2·√128 = 2.26."""
    G = gaussian(64, 256)
    full = one_step(mo.HiMuon, G, tile=128)
    strict = one_step(mo.HiMuon, G, tile=128, small_matrix="tile")
    ns, tiled = matfun.newton_schulz(G, 5), matfun.tiled_newton_schulz(G, 128, 5)
    torch.testing.assert_close(full, 0.02 * 3.2 * ns, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(strict, 0.02 * 0.2 * math.sqrt(128) * tiled, rtol=1e-12, atol=1e-14)
    assert 0.2 * math.sqrt(128) == pytest.approx(2.2627, abs=1e-4)
    # the tile map itself stays the pure tile map, and the two maps really differ (0.62 here)
    assert float((tiled - ns).norm() / ns.norm()) == pytest.approx(0.62, abs=0.03)


def test_himuon_mixes_small_and_tiled_parameters():
    """A step with one small (full NS) and one large (tiled) parameter equals the per-parameter maps;
    one batched call per configuration."""
    G_small, G_big = gaussian(8, 12, seed=1), gaussian(24, 40, seed=2)
    ps = [torch.nn.Parameter(torch.zeros_like(G)) for G in (G_small, G_big)]
    opt = mo.HiMuon(ps, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, tile=16, precision="float64")
    for p, G in zip(ps, (G_small, G_big)):
        p.grad = G.clone()
    opt.step()
    torch.testing.assert_close(-ps[0].detach(), 0.1 * 0.2 * math.sqrt(12) * matfun.newton_schulz(G_small, 5))
    torch.testing.assert_close(
        -ps[1].detach(), 0.1 * 0.2 * math.sqrt(16) * matfun.tiled_newton_schulz(G_big, 16, 5), rtol=1e-12, atol=1e-14
    )


def test_muon2_tiled_follows_the_same_small_matrix_rule():
    G = gaussian(64, 256)
    full = one_step(mo.Muon2, G, tile=128, beta2=0.0, adjust_lr_fn="match_rms_adamw")
    X = G / (G.abs() + 1e-8)
    torch.testing.assert_close(full, 0.02 * 3.2 * matfun.newton_schulz(X, 5), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- 10.3 learning-rate rules


@pytest.mark.parametrize("cls", [mo.Muon, mo.HiMuon, mo.Muon2])
@pytest.mark.parametrize("shape", [(48, 16), (16, 48)])
def test_spectral_norm_rule_is_sqrt_fan_out_over_fan_in(cls, shape):
    """dion's ``lr·√(fan_out/fan_in)``: the ratio of two runs differing only in the rule."""
    G = gaussian(*shape)
    extra = {"tile": None} if cls is mo.HiMuon else ({"beta2": 0.0} if cls is mo.Muon2 else {})
    spectral = one_step(cls, G, adjust_lr_fn="spectral_norm", **extra)
    original = one_step(cls, G, adjust_lr_fn="original", **extra)
    fan_out, fan_in = shape
    torch.testing.assert_close(spectral, original * math.sqrt(fan_out / fan_in) / math.sqrt(max(1, fan_out / fan_in)))


def test_default_rules_differ_by_3_2_on_a_256_layer():
    """The README's warning: lr=0.02 on 256×256, Muon ("original") against HiMuon ("match_rms_adamw")."""
    G = gaussian(256, 256)
    muon = one_step(mo.Muon, G, eps=0.0)
    himuon = one_step(mo.HiMuon, G)
    torch.testing.assert_close(himuon, 3.2 * muon, rtol=1e-10, atol=1e-13)
    assert mo.Muon([torch.nn.Parameter(G)]).defaults["adjust_lr_fn"] in (None, "original")
    assert mo.HiMuon([torch.nn.Parameter(G)]).defaults["adjust_lr_fn"] == "match_rms_adamw"
    assert mo.Muon2([torch.nn.Parameter(G)]).defaults["adjust_lr_fn"] in (None, "original")


def test_each_docstring_states_its_default_rule():
    assert '"original"' in mo.Muon.__doc__ and "lr·√max(1, A/B)" in mo.Muon.__doc__
    assert "spectral_norm" in mo.Muon.__doc__ and "spectral_norm" in mo.Muon2.__doc__
    doc = " ".join(mo.HiMuon.__doc__.split())
    assert "``None``: full matrices — Muon's orthogonalisation, but still HiMuon's lr rule" in doc
    assert "3.2×" in doc


# --------------------------------------------------------------------------- 10.5 split_params and the README


class TinyLM(torch.nn.Module):
    def __init__(self, tie: bool = False):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.conv = torch.nn.Conv1d(16, 16, 3, padding=1)
        self.blocks = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16, bias=False))
        self.norm = torch.nn.LayerNorm(16)
        self.lm_head = torch.nn.Linear(16, 50, bias=False)
        self.scale = torch.nn.Parameter(torch.ones(()))
        if tie:
            self.lm_head.weight = self.embed.weight


def names(pairs):
    return [n for n, _ in pairs]


def test_split_params_rule():
    model = TinyLM()
    hidden, rest = split = mo.split_params(model)
    assert names(hidden) == ["conv.weight", "blocks.0.weight", "blocks.2.weight"]
    assert names(rest) == [
        "scale",
        "embed.weight",
        "conv.bias",
        "blocks.0.bias",
        "norm.weight",
        "norm.bias",
        "lm_head.weight",
    ]
    # every trainable parameter exactly once
    assert sorted(map(id, (p for part in split for _, p in part))) == sorted(map(id, model.parameters()))
    assert names(mo.split_params(model, head="lm_head")[0]) == names(hidden)
    assert "lm_head.weight" in names(mo.split_params(model, head=None)[0])
    assert "blocks.2.weight" in names(mo.split_params(model, head=model.lm_head)[0])


def test_split_params_tied_frozen_and_errors():
    model = TinyLM(tie=True)
    hidden, rest = mo.split_params(model)
    assert "embed.weight" in names(rest) and "lm_head.weight" not in names(hidden) + names(rest)
    model.blocks[0].weight.requires_grad_(False)
    assert "blocks.0.weight" not in names(mo.split_params(model)[0])
    with pytest.raises(ValueError, match="head='nope'"):
        mo.split_params(model, head="nope")
    with pytest.raises(ValueError, match=r"no torch.nn.Linear"):
        mo.split_params(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
    with pytest.raises(TypeError, match=r"torch.nn.Module"):
        mo.split_params([torch.zeros(3, 3)])
    # what split_params returns, the optimizers accept: no bias reaches Muon
    mo.Muon(hidden, lr=0.02)
    torch.optim.AdamW(rest, lr=3e-4)


def readme_optimizer_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Optimizers\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_optimizer_example_runs():
    """Executes the README's "Optimizers" code blocks as written, in order, in one namespace."""
    blocks = readme_optimizer_blocks()
    assert len(blocks) >= 2 and "split_params(model)" in blocks[0]
    namespace: dict = {}
    torch.manual_seed(0)
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    model, optimizers = namespace["model"], namespace["optimizers"]
    assert isinstance(optimizers[0], mo.Muon) and len(namespace["hidden"]) == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert isinstance(namespace["opt"], mo.Muon2)  # the last line of the second block
