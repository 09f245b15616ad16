"""Muon on :class:`matfun.NewtonSchulz`: torch.optim.Muon's algorithm with any schedule,
step count and compute precision.

References
----------
K. Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024),
https://kellerjordan.github.io/posts/muon/
J. Liu et al., *Muon is Scalable for LLM Training* (2025), arXiv:2502.16982
(the ``"match_rms_adamw"`` learning-rate adjustment).
``torch.optim.Muon`` (PyTorch ≥ 2.9), whose defaults and update order this class follows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..newton_schulz import NewtonSchulz
from ._common import (
    JORDAN,
    MatrixOptimizer,
    adjust_lr,
    as_matrix,
    check_adjust_lr_fn,
    check_lr,
    check_nonneg,
    check_ns_steps,
    check_precision,
    check_unit_interval,
    default_precision,
    matrix_shape,
    pick_alias,
    resolve_coefficients,
    to_scalar,
)

__all__ = ["Muon"]


class Muon(MatrixOptimizer):
    r"""Muon: momentum, Newton–Schulz orthogonalisation, decoupled weight decay.

    For every matrix parameter ``θ`` with gradient ``g`` (torch.optim.Muon's
    recurrence, operation for operation)::

        B ← B.lerp(g, 1 − μ)                      # = μB + (1 − μ)g
        U ← g.lerp(B, μ) if nesterov else B
        O ← NS_K(U)                                # matfun.NewtonSchulz(ns_steps, ns_coefficients, precision)
        θ ← θ (1 − lr·λ)                           # decoupled weight decay
        θ ← θ − AdjustLR(lr, shape) · O

    With the defaults a user switching from ``torch.optim.Muon`` gets the same
    training run (on CUDA, where both compute in bfloat16; see Notes).

    Parameters
    ----------
    params : iterable
        Matrix parameters, or ``(name, tensor)`` pairs (``model.named_parameters()``;
        names then appear in error messages), or param-group dicts.  Conv kernels
        (``ndim > 2``) are flattened to ``(out, in·k·k)`` for the map and the
        learning-rate adjustment, and reshaped back.  Vectors and scalars are
        rejected: give them to ``torch.optim.AdamW``.
    lr : float or 1-element Tensor, default 1e-3
        Learning rate.
    weight_decay : float, default 0.1
        Decoupled weight decay ``λ``: ``θ ← θ(1 − lr·λ)``.
    momentum : float in [0, 1), default 0.95
        Momentum factor ``μ``.
    nesterov : bool, default True
        Nesterov momentum.
    ns_coefficients : str, Schedule, sequence of (a, b, c) or one (a, b, c), default Jordan
        Newton–Schulz schedule (``"jordan"`` = torch's ``(3.4445, −4.7750, 2.0315)``,
        ``"you"``, ``"polar_express"``, ``"cubic"``, or explicit tuples; the last
        tuple repeats).  Alias: ``coefficients``.
    eps : float, default 1e-7
        torch.optim.Muon's floor on the normalisation: the map's input is
        ``U / max(‖U‖_F, eps)``.  matfun's own normalisation is exactly scale
        invariant; when ``0 < ‖U‖_F < eps`` the floor is applied exactly by
        running the map on ``[[U, 0], [0, √(eps² − ‖U‖²)]]`` (a block-diagonal
        matrix of Frobenius norm ``eps`` on which Newton–Schulz acts block by
        block) and keeping the ``U`` block.  ``eps=0`` disables the floor.
    ns_steps : int, default 5
        Newton–Schulz steps ``K`` (< 100).  Alias: ``steps``.
    adjust_lr_fn : {None, "original", "match_rms_adamw"}, default None
        ``"original"`` (or None): ``lr·√max(1, A/B)``; ``"match_rms_adamw"``:
        ``lr·0.2·√max(A, B)``, for the ``A × B`` (flattened) parameter.
    precision : {None, "float32", "float64", "bfloat16", "bfloat16-emulated"}, keyword-only
        Compute precision of the map.  ``None`` (default): ``"bfloat16"`` on CUDA,
        like torch.optim.Muon, and ``"float32"`` on CPU and other devices, because
        native bf16 matrix products on CPU are hundreds of times slower than
        float32.  Pass ``"bfloat16"`` on CPU for torch's numerics, or
        ``"bfloat16-emulated"`` for bf16-rounded products at float32 speed.
    check_finite : bool, default True, keyword-only
        Reject NaN/Inf gradients (one host sync per step and device).

    Notes
    -----
    * Differences from torch.optim.Muon: conv kernels are accepted (flattened),
      momentum must lie in [0, 1), NaN/Inf gradients raise, the CPU default
      precision is float32, and the map normalises in float32 before rounding to
      bf16 (torch divides by a bf16-rounded norm).  With ``precision="bfloat16"``
      the two agree to bf16 round-off (``tests/test_optim.py`` measures it).
    * One host synchronisation per step (per device) fetches the finiteness
      flags and the norms ``‖U‖_F`` needed by the ``eps`` floor together; the norms
      are computed out of place with the same operations as the momentum
      update, so they are exact.  ``check_finite=False, eps=0`` has no sync.
    * State per parameter: ``"momentum_buffer"`` (same name and meaning as torch's).

    Examples
    --------
    >>> import torch, matfun.optim
    >>> model = torch.nn.Sequential(torch.nn.Linear(32, 16, bias=False), torch.nn.Linear(16, 4))
    >>> matrices = [p for p in model.parameters() if p.ndim >= 2]
    >>> others = [p for p in model.parameters() if p.ndim < 2]
    >>> opt = matfun.optim.Muon(matrices, lr=0.02)
    >>> adamw = torch.optim.AdamW(others, lr=3e-4)
    """

    _name = "Muon"

    def __init__(
        self,
        params: Iterable,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Any = None,
        eps: float = 1e-7,
        ns_steps: int | None = None,
        adjust_lr_fn: str | None = None,
        *,
        precision: str | None = None,
        coefficients: Any = None,
        steps: int | None = None,
        check_finite: bool = True,
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_coefficients": pick_alias("ns_coefficients", ns_coefficients, "coefficients", coefficients, JORDAN),
            "eps": eps,
            "ns_steps": pick_alias("ns_steps", ns_steps, "steps", steps, 5),
            "adjust_lr_fn": adjust_lr_fn,
            "precision": precision,
            "check_finite": check_finite,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_common(group)
        check_nonneg("eps", group["eps"])
        check_adjust_lr_fn(group["adjust_lr_fn"])

    def _pre_sync_stats(self, group, params, grads):
        """‖U‖_F of each update-to-be (for the ``eps`` floor), computed out of place with the
        same operations as :meth:`_momentum`, so the value is exact and the host sees it in
        the same synchronisation as the finiteness flags."""
        if not group["eps"] > 0:
            return None
        momentum, nesterov = group["momentum"], group["nesterov"]
        norms = []
        for p, g in zip(params, grads):
            buf = self.state[p].get("momentum_buffer")
            buf = torch.zeros_like(g, memory_format=torch.preserve_format) if buf is None else buf
            new = buf.lerp(g, 1 - momentum)
            u = g.lerp(new, momentum) if nesterov else new
            norms.append(torch.linalg.vector_norm(_wide(u)))
        return norms

    def _step_groups(self, work, stats) -> None:
        for (group, params, grads), norms in zip(work, stats):
            if not params:
                continue
            updates = self._momentum(group, params, grads)
            outs = orthogonalize(
                [as_matrix(u) for u in updates],
                group["ns_steps"],
                group["ns_coefficients"],
                group["precision"],
                group["eps"],
                norms,
            )
            lr = to_scalar(group["lr"])
            for p, o in zip(params, outs):
                self._apply(p, o, lr, adjust_lr(lr, group["adjust_lr_fn"], matrix_shape(p)), group["weight_decay"])


def check_common(group: dict[str, Any]) -> None:
    """Validate the hyperparameters every matrix optimizer shares."""
    check_lr(group["lr"])
    check_nonneg("weight decay", group["weight_decay"])
    check_unit_interval("momentum", group["momentum"])
    if not isinstance(group["nesterov"], bool):
        raise ValueError(f"nesterov must be a bool, got {group['nesterov']!r}")
    resolve_coefficients(group["ns_coefficients"])
    check_ns_steps(group["ns_steps"])
    check_precision(group["precision"])


def orthogonalize(
    mats: list[Tensor],
    steps: int,
    coefficients: Any,
    precision: str | None,
    eps: float,
    norms: list[float] | None = None,
) -> list[Tensor]:
    """``NS_K(U / max(‖U‖_F, eps))`` for each matrix, through :class:`matfun.NewtonSchulz`.

    ``norms``: the host values of ``‖U‖_F`` (computed here, one sync, when omitted).
    """
    schedule = resolve_coefficients(coefficients)
    maps: dict[str, NewtonSchulz] = {}
    if norms is None:
        norms = _norms(mats) if eps > 0 else [math.inf] * len(mats)
    outs = []
    for X, n in zip(mats, norms):
        prec = default_precision(precision, X.device)
        ns = maps.get(prec) or maps.setdefault(prec, NewtonSchulz(steps, schedule, prec))
        if 0 < n < eps:
            H, W = X.shape
            aug = X.new_zeros((H + 1, W + 1))
            aug[:H, :W] = X
            aug[H, W] = math.sqrt(max(eps * eps - n * n, 0.0))
            outs.append(ns(aug, check_finite=False)[:H, :W])
        else:
            outs.append(ns(X, check_finite=False))
    return outs


def _norms(mats: list[Tensor]) -> list[float]:
    """Frobenius norms (float32 accumulation) with one host sync per device."""
    out = [0.0] * len(mats)
    by_device: dict[torch.device, list[int]] = {}
    for k, X in enumerate(mats):
        by_device.setdefault(X.device, []).append(k)
    for ks in by_device.values():
        vals = torch.stack([torch.linalg.vector_norm(_wide(mats[k])) for k in ks]).cpu().tolist()
        for k, v in zip(ks, vals):
            out[k] = v
    return out


def _wide(X: Tensor) -> Tensor:
    return X.float() if X.dtype in (torch.bfloat16, torch.float16) else X
