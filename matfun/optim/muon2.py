"""Muon²: Newton–Schulz on the second-moment-preconditioned momentum.

References
----------
*Muon²*: Adam-style second-moment preconditioning for Muon (``NS(M ⊘ (√V + ε))``),
with the factorised low-memory variant Muon²-F.
K. Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024).
``torch.optim.Muon`` (momentum recurrence, decoupled weight decay, lr adjustment).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

import matfun

from ._common import (
    JORDAN,
    MatrixOptimizer,
    adjust_lr,
    as_matrix,
    check_adjust_lr_fn,
    check_nonneg,
    check_unit_interval,
    default_precision,
    matrix_shape,
    pick_alias,
    resolve_coefficients,
    to_scalar,
)
from .himuon import effective_tile, resolve_tile
from .muon import check_common

__all__ = ["Muon2"]


class Muon2(MatrixOptimizer):
    r"""Muon² (and Muon²-F): orthogonalise the momentum after dividing it by √V.

    For every (flattened) matrix parameter with gradient ``G``::

        B ← B.lerp(G, 1 − β₁);  M ← G.lerp(B, β₁) if nesterov else B   # torch.optim.Muon's momentum
        V ← β₂ V + (1 − β₂) G ⊙ G            # full; or row/column EMAs of G² (factorized)
        O ← NS_K(M ⊘ (√V + ε))               # tiled NS when ``tile`` is given
        θ ← θ(1 − lr·λ) − AdjustLR(lr, shape) · O

    The second moment is :class:`matfun.SecondMoment` (full, or Muon²-F with
    ``V̂ = r cᵀ / sum(c)``), the map :func:`matfun.preconditioned_newton_schulz`.

    Momentum convention: the published Muon² writes ``M ← β₁M + G``; this class
    uses torch.optim.Muon's EMA form (``B ← β₁B + (1 − β₁)G``, Nesterov
    ``(1 − β₁)G + β₁B``), which is exactly ``(1 − β₁)`` times the heavy-ball sum
    (and its Nesterov variant ``G + β₁M``).  Division by ``√V + ε`` is linear in
    ``M`` and Newton–Schulz normalises its input, so the update is the same in
    both conventions.  Likewise ``V`` is not bias-corrected (as published): a
    scalar on ``V`` only changes the effective ``ε``.  With ``β₂ = 0`` and a
    zero momentum buffer, the first update is ``NS(G ⊘ (|G| + ε))``.

    Parameters
    ----------
    params : iterable
        As for :class:`matfun.optim.Muon` (conv kernels flattened to
        ``(out, in·k·k)``; the factorised moment then keeps the rows and columns
        of that matrix).
    lr : float, default 1e-3
    weight_decay : float, default 0.1
        Decoupled: ``θ ← θ(1 − lr·λ)``.
    momentum : float in [0, 1), default 0.95
        ``β₁``.
    nesterov : bool, default True
    beta2 : float in [0, 1), default 0.95
        EMA factor of the second moment.
    eps : float >= 0, default 1e-8
        Added to ``√V`` (``eps = 0`` raises at a zero of ``V``).
    factorized : bool, default False
        Muon²-F: keep ``H + W`` numbers per matrix instead of ``H·W``.
    ns_coefficients : schedule, default Jordan
        Alias ``coefficients``.
    ns_steps : int, default 5
        Alias ``steps``.  The Muon² paper reports that preconditioning reaches a
        given alignment with about 40% fewer steps, so 3 is a reasonable choice.
    adjust_lr_fn : {None, "original", "match_rms_adamw"}, default None
        torch.optim.Muon's adjustment on the (flattened) matrix shape, or on the
        effective tile ``min(Th, H) × min(Tw, W)`` when ``tile`` is given.
    tile : int, (Th, Tw), None, callable or list of (start_step, tile), default None
        ``None``: full Newton–Schulz; otherwise tile-wise NS (HiMuon) on the
        preconditioned momentum, with the same specification forms as
        :class:`matfun.optim.HiMuon`.
    precision : str or None, keyword-only
        As for :class:`matfun.optim.Muon` (default bf16 on CUDA, float32 elsewhere).
        The preconditioning itself runs in the parameter's dtype.
    check_finite : bool, default True, keyword-only

    Notes
    -----
    State per parameter: ``"momentum_buffer"``, and ``"exp_avg_sq"`` (full) or
    ``"exp_avg_sq_row"``/``"exp_avg_sq_col"`` (factorised).  Each parameter is
    mapped by its own call (no cross-layer batching).
    """

    _name = "Muon2"

    def __init__(
        self,
        params: Iterable,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        beta2: float = 0.95,
        eps: float = 1e-8,
        factorized: bool = False,
        ns_coefficients: Any = None,
        ns_steps: int | None = None,
        adjust_lr_fn: str | None = None,
        tile: Any = None,
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
            "beta2": beta2,
            "eps": eps,
            "factorized": factorized,
            "ns_coefficients": pick_alias("ns_coefficients", ns_coefficients, "coefficients", coefficients, JORDAN),
            "ns_steps": pick_alias("ns_steps", ns_steps, "steps", steps, 5),
            "adjust_lr_fn": adjust_lr_fn,
            "tile": tile,
            "precision": precision,
            "check_finite": check_finite,
            "step_count": 0,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        from .himuon import check_tile_spec

        check_common(group)
        check_adjust_lr_fn(group["adjust_lr_fn"])
        check_unit_interval("beta2", group["beta2"])
        check_nonneg("eps", group["eps"])
        if not isinstance(group["factorized"], bool):
            raise ValueError(f"factorized must be a bool, got {group['factorized']!r}")
        check_tile_spec(group["tile"])

    def _step_groups(self, work, stats) -> None:
        for group, params, grads in work:
            tile = resolve_tile(group["tile"], group["step_count"])
            group["step_count"] += 1
            if not params:
                continue
            updates = self._momentum(group, params, grads)
            schedule = resolve_coefficients(group["ns_coefficients"])
            lr = to_scalar(group["lr"])
            for p, g, u in zip(params, grads, updates):
                moment = self._second_moment(group, p, as_matrix(g))
                out = matfun.preconditioned_newton_schulz(
                    as_matrix(u),
                    moment,
                    group["eps"],
                    group["ns_steps"],
                    schedule,
                    tile=tile,
                    precision=default_precision(group["precision"], p.device),
                    check_finite=False,
                )
                eff = effective_tile(tile, matrix_shape(p))
                self._apply(p, out, lr, adjust_lr(lr, group["adjust_lr_fn"], eff), group["weight_decay"])

    def _second_moment(self, group: dict, p: Tensor, G: Tensor) -> "matfun.SecondMoment":
        """Fold ``G`` into the parameter's second moment; return it as a :class:`matfun.SecondMoment`."""
        state = self.state[p]
        sm = matfun.SecondMoment(beta2=group["beta2"], eps=group["eps"], factorized=group["factorized"])
        keys = ("exp_avg_sq_row", "exp_avg_sq_col") if sm.factorized else ("exp_avg_sq",)
        if all(k in state for k in keys):
            sm.shape = tuple(G.shape)
            if sm.factorized:
                sm.row, sm.col = state[keys[0]], state[keys[1]]
            else:
                sm.full = state[keys[0]]
        sm.update(G)
        if sm.factorized:
            state[keys[0]], state[keys[1]] = sm.row, sm.col
        else:
            state[keys[0]] = sm.full
        return sm
