"""Muon-type optimizers with one planted bug each (and the correct ones the battery must pass).

:class:`PlantedMuon` is torch.optim.Muon's algorithm written out (EMA momentum,
Nesterov, Jordan's 5 steps in float32, ``lr·√max(1, A/B)``, decoupled weight
decay); ``bug=`` swaps one line for the mistake a public thread reported.
``tests/test_optimizer_battery.py`` asserts which check catches each.
Importable as ``tests._planted_optimizers:NAME`` for the CLI tests.
"""

from __future__ import annotations

import math

import torch

import matfun

JORDAN = (3.4445, -4.7750, 2.0315)

BUGS = (
    "sgd",  # never runs Newton–Schulz (DeepSpeed #8441)
    "gradient",  # orthogonalises the gradient, not the momentum (optax #1170)
    "post_ns_momentum",  # averages orthogonalised gradients
    "lr_inverted",  # √max(1, B/A): wrong for tall and wide matrices (dion #111-#114)
    "conv_shape_2",  # lr rule on shape[:2] of a conv kernel (timm #2791)
    "too_small",  # every step 10x too small
    "coupled_wd",  # weight decay through the map: NS(g + λθ)
    "decay_adjusted_lr",  # θ(1 − adjusted_lr·λ)
    "bf16_alias",  # torch's bf16 nesterov=False: the buffer normalised in place
    "half_applied",  # raises on a NaN after updating earlier parameters
    "nan_to_num",  # silently replaces a NaN gradient
    "global_clip",  # clips by the global gradient norm: one NaN poisons every parameter
    "modifies_grad",  # normalises p.grad in place
    "nondeterministic",  # adds noise
    "state_outside",  # keeps the momentum outside state_dict(): resume is wrong
    "zero_nan",  # divides by ‖X‖ without a floor: 0/0 on a zero gradient
    "wrong_momentum",  # declares momentum 0.95, uses 0.8
    "nesterov_ignored",  # declares nesterov=True, runs plain momentum
)


def newton_schulz(X: torch.Tensor, steps: int = 5, eps: float = 1e-7, in_place: bool = False) -> torch.Tensor:
    """Keller Jordan's loop (float32 unless the input is bf16 and ``in_place``)."""
    Y = X if in_place else X.float()
    tall = Y.shape[0] > Y.shape[1]
    if tall:
        Y = Y.T
    if in_place:
        Y.div_(Y.norm().clamp(min=eps))
    else:
        Y = Y / Y.norm().clamp(min=eps) if eps else Y / Y.norm()
    a, b, c = JORDAN
    for _ in range(steps):
        A = Y @ Y.T
        Y = a * Y + (b * A + c * A @ A) @ Y
    return (Y.T if tall else Y).to(X.dtype)


class PlantedMuon(torch.optim.Optimizer):
    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, bug=None):
        if bug is not None and bug not in BUGS:
            raise ValueError(f"unknown bug {bug!r}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay})
        self.bug = bug
        self._outside: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        bug = self.bug
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if bug == "global_clip":
            total = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params))
            for p in params:
                p.grad.mul_(torch.clamp(1.0 / (total + 1e-12), max=1.0))
        for group in self.param_groups:
            lr, mu, lam = group["lr"], group["momentum"], group["weight_decay"]
            lr = float(lr)
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if bug == "half_applied" and not torch.isfinite(g).all():
                    raise ValueError("non-finite gradient")
                if bug == "nan_to_num":
                    g = torch.nan_to_num(g, nan=0.0, posinf=0.0)
                if bug == "modifies_grad":
                    g.div_(g.norm().clamp(min=1e-12))
                if bug == "coupled_wd":
                    g = g + lam * p
                if bug == "wrong_momentum":
                    mu = 0.8
                if bug == "state_outside":
                    buf = self._outside.setdefault(id(p), torch.zeros_like(g))
                else:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    buf = state["momentum_buffer"]
                if bug == "post_ns_momentum":
                    buf.lerp_(newton_schulz(g.reshape(len(g), -1)).reshape(g.shape), 1 - mu)
                    update = buf
                else:
                    buf.lerp_(g, 1 - mu)
                    nesterov = group["nesterov"] and bug != "nesterov_ignored"
                    update = g.lerp(buf, mu) if nesterov else buf
                M = update.reshape(len(update), -1)
                if bug in ("sgd", "post_ns_momentum"):
                    O = M
                elif bug == "gradient":
                    O = newton_schulz(g.reshape(len(g), -1))
                elif bug == "bf16_alias":
                    O = newton_schulz(M.bfloat16() if M.dtype != torch.bfloat16 else M, in_place=True).to(M.dtype)
                else:
                    O = newton_schulz(M, eps=0 if bug == "zero_nan" else 1e-7)
                if bug == "nondeterministic":
                    O = O + 1e-3 * torch.randn_like(O)
                A, B = (p.shape[0], p.shape[1]) if bug == "conv_shape_2" else M.shape
                ratio = math.sqrt(max(1.0, (B / A) if bug == "lr_inverted" else (A / B)))
                if bug == "too_small":
                    ratio *= 0.1
                if bug != "coupled_wd":
                    p.mul_(1 - (lr * ratio if bug == "decay_adjusted_lr" else lr) * lam)
                p.add_(O.reshape(p.shape).to(p.dtype), alpha=-lr * ratio)
        return None


def planted(bug: str | None = None, **kwargs):
    """A factory ``params -> PlantedMuon(params, bug=bug, **kwargs)``."""

    def factory(params):
        return PlantedMuon(params, bug=bug, **kwargs)

    factory.__name__ = factory.__qualname__ = f"planted_{bug or 'correct'}"
    return factory


class KellerMuon(torch.optim.Optimizer):
    """Keller Jordan's original: heavy-ball *sum* momentum, Nesterov as ``g + μB``, bf16 NS."""

    def __init__(self, params, lr=0.02, momentum=0.95, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": True, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"])
                X = g.reshape(len(g), -1).bfloat16()  # conv kernels: flattened
                tall = X.size(0) > X.size(1)
                X = X.T if tall else X
                X = X / (X.norm() + 1e-7)
                a, b, c = JORDAN
                for _ in range(5):
                    A = X @ X.T
                    X = a * X + (b * A + c * A @ A) @ X
                X = X.T if tall else X
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(X.reshape(p.shape).to(p.dtype), alpha=-group["lr"] * max(1, X.size(0) / X.size(1)) ** 0.5)


def torch_muon(params):
    return torch.optim.Muon(params, lr=0.02)


def keller_muon(params):
    return KellerMuon(params)


def matfun_muon(params):
    return matfun.optim.Muon(params, lr=0.02)


def sgd(params):
    return torch.optim.SGD(params, lr=0.02, momentum=0.9)


def raises_always(params):
    raise RuntimeError("no optimizer today")


def not_an_optimizer(params):
    return object()


def exits(params):
    raise SystemExit(0)


sgd_momentum = planted("sgd")
coupled = planted("coupled_wd")
