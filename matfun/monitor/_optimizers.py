"""What the monitor knows about particular optimizers: weight decay, momentum, the map's input.

Everything here reads the optimizer's param groups and state, out of place; nothing is
written.  Unknown optimizers get the generic answers (no decoupled decay, the momentum
under the user's state key, no map input).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .metrics import preconditioned


def _matfun_classes() -> tuple[type, ...]:
    from matfun.optim import HiMuon, Muon, Muon2

    return Muon, HiMuon, Muon2


def _torch_muon() -> type | None:
    return getattr(torch.optim, "Muon", None)


def lr_of(group: dict[str, Any]) -> float | None:
    lr = group.get("lr")
    if isinstance(lr, Tensor):
        return float(lr.detach())
    return float(lr) if isinstance(lr, (int, float)) else None


def decoupled_decay(optimizer: torch.optim.Optimizer, group: dict[str, Any], override: bool | None) -> float:
    """``λ`` of a decoupled weight decay ``θ ← θ(1 − lr·λ)``, else 0 (L2 decay, folded into
    the gradient, stays part of the update direction)."""
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    if override is not None:
        return wd if override else 0.0
    muon = _torch_muon()
    decoupled = (
        isinstance(optimizer, (torch.optim.AdamW, *_matfun_classes()))
        or (muon is not None and isinstance(optimizer, muon))
        or bool(group.get("decoupled_weight_decay", False))
    )
    return wd if decoupled else 0.0


def momentum_of(optimizer: torch.optim.Optimizer, p: Tensor, key: str | Callable) -> Tensor | None:
    """The momentum of ``p`` after the step: ``state[p][key]`` or ``key(optimizer, p)``."""
    if callable(key):
        return key(optimizer, p)
    value = optimizer.state.get(p, {}).get(key)
    return value if isinstance(value, Tensor) else None


def _flat(t: Tensor) -> Tensor:
    return t.detach().reshape(t.shape[0], -1)


def step_plan(optimizer: torch.optim.Optimizer, p: Tensor, group: dict[str, Any]) -> float | None:
    """Before the step: the lr rule's factor ``AdjustLR(1, shape)`` of ``p`` for the optimizers
    whose map input the monitor reconstructs (None for the others)."""
    muon = _torch_muon()
    if muon is not None and isinstance(optimizer, muon):
        adjust = getattr(getattr(torch.optim, "_muon", None), "_adjust_lr", None)
        if adjust is not None:
            return float(adjust(1.0, group.get("adjust_lr_fn"), p.shape))
        A, B = p.shape[:2]
        return (
            math.sqrt(max(1, A / B)) if group.get("adjust_lr_fn") in (None, "original") else 0.2 * math.sqrt(max(A, B))
        )
    classes = _matfun_classes()
    if not isinstance(optimizer, classes):
        return None
    from matfun.optim._common import adjust_lr, matrix_shape
    from matfun.optim._tiles import resolve_tile, tile_plan

    shape = matrix_shape(p)
    if isinstance(optimizer, (classes[1], classes[2])):  # HiMuon, Muon²: the tile in force
        tile = resolve_tile(group["tile"], group["step_count"])
        _, shape = tile_plan(tile, shape, group.get("small_matrix", "full"))
    return float(adjust_lr(1.0, group.get("adjust_lr_fn"), shape))


def map_input(optimizer: torch.optim.Optimizer, p: Tensor, group: dict[str, Any]) -> Tensor | None:
    """After the step: what the orthogonalising map was applied to (torch.optim.Muon and matfun's
    Muon/HiMuon: the (Nesterov) momentum; Muon²: it divided by ``√V + ε``), else None."""
    muon = _torch_muon()
    classes = _matfun_classes()
    if not (isinstance(optimizer, classes) or (muon is not None and isinstance(optimizer, muon))):
        return None
    state = optimizer.state.get(p, {})
    if not isinstance(state.get("momentum_buffer"), Tensor) or p.grad is None:
        return None
    X = update_momentum(optimizer, p, group)
    if X is None:
        return None
    X = _flat(X)
    if isinstance(optimizer, classes[2]):  # Muon²
        V = second_moment_of(optimizer, p)
        if V is None:
            return None
        return preconditioned(X, V, group["eps"])
    return X


def update_momentum(optimizer: torch.optim.Optimizer, p: Tensor, group: dict[str, Any]) -> Tensor | None:
    """After the step: the momentum the update is built from — ``g.lerp(B, μ)`` for Nesterov
    (torch.optim.Muon's and matfun's convention), the ``momentum_buffer`` ``B`` otherwise, Adam's
    ``exp_avg``; None when the state holds neither."""
    state = optimizer.state.get(p, {})
    buf = state.get("momentum_buffer")
    if isinstance(buf, Tensor):
        buf = buf.detach()
        if group.get("nesterov", False) and p.grad is not None:
            return p.grad.detach().to(buf.dtype).lerp(buf, group["momentum"])
        return buf
    avg = state.get("exp_avg")
    return avg.detach() if isinstance(avg, Tensor) else None


def second_moment_of(optimizer: torch.optim.Optimizer, p: Tensor) -> Tensor | tuple[Tensor, Tensor] | None:
    """The optimizer's own second moment of ``p``: Muon²'s (full or ``(row, col)``), Adam's
    ``exp_avg_sq``; None if it keeps none."""
    state = optimizer.state.get(p, {})
    if isinstance(state.get("exp_avg_sq_row"), Tensor) and isinstance(state.get("exp_avg_sq_col"), Tensor):
        return state["exp_avg_sq_row"], state["exp_avg_sq_col"]
    V = state.get("exp_avg_sq")
    return V if isinstance(V, Tensor) and V.shape == p.shape else None


def second_moment_eps(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> float:
    eps = group.get("eps", 1e-8)
    return float(eps) if isinstance(eps, (int, float)) and eps > 0 else 1e-8
