"""HiMuon: Muon with tile-wise Newton–Schulz, cross-layer batching and a tile schedule.

References
----------
*Hierarchical Muon (HiMuon)*: tile-wise Newton–Schulz with per-tile Frobenius
normalisation, cross-layer batching of equal-shape tiles, memory-bounded chunks,
a per-tile learning-rate scale ``0.2·√max(Th, Tw)`` and a tile-size schedule.
K. Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024).
``torch.optim.Muon`` (momentum recurrence, decoupled weight decay).
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
    default_precision,
    matrix_shape,
    pick_alias,
    resolve_coefficients,
    to_scalar,
)
from .muon import check_common

__all__ = ["HiMuon", "check_tile_spec", "resolve_tile"]

Tile = tuple[int, int] | None


def _check_tile_value(tile: Any) -> Tile:
    """``None`` (full matrices), ``T`` or ``(Th, Tw)`` → ``None`` or ``(Th, Tw)``."""
    if tile is None:
        return None
    return matfun.check_tile(tuple(tile) if isinstance(tile, list) else tile)


def _is_schedule(spec: Any) -> bool:
    return (
        isinstance(spec, (list, tuple))
        and len(spec) > 0
        and all(isinstance(e, (list, tuple)) and len(e) == 2 for e in spec)
    )


def check_tile_spec(spec: Any) -> None:
    """Validate a tile specification (see :class:`HiMuon`); raises ``ValueError``."""
    if spec is None or callable(spec):
        return
    if _is_schedule(spec):
        starts = []
        for start, tile in spec:
            if isinstance(start, bool) or not isinstance(start, int) or start < 0:
                raise ValueError(f"tile schedule start steps must be integers >= 0, got {start!r}")
            _check_tile_value(tile)
            starts.append(start)
        if starts[0] != 0:
            raise ValueError(f"a tile schedule must start at step 0, got {list(spec)!r}")
        if any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"tile schedule start steps must increase strictly, got {starts}")
        return
    _check_tile_value(spec)


def resolve_tile(spec: Any, step: int) -> Tile:
    """The tile in force at (0-based) optimizer step ``step``: ``None`` or ``(Th, Tw)``."""
    if callable(spec):
        return _check_tile_value(spec(step))
    if _is_schedule(spec):
        current = None
        for start, tile in spec:
            if start <= step:
                current = tile
        return _check_tile_value(current)
    return _check_tile_value(spec)


def effective_tile(tile: Tile, shape: tuple[int, int]) -> tuple[int, int]:
    """``min(Th, H) × min(Tw, W)`` (the whole matrix for ``tile=None``)."""
    H, W = shape
    if tile is None:
        return H, W
    return min(tile[0], H), min(tile[1], W)


class HiMuon(MatrixOptimizer):
    r"""Muon with tile-wise Newton–Schulz (HiMuon) and cross-layer batching.

    Momentum and weight decay are torch.optim.Muon's (see :class:`matfun.optim.Muon`).
    The orthogonalisation is :func:`matfun.tiled_newton_schulz`: every ``Th × Tw``
    tile of every (flattened) parameter is normalised by its own Frobenius norm
    and run through the same Newton–Schulz map; edge tiles are ragged.  In each
    :meth:`step` the momentum updates of *all* parameters sharing a
    configuration (tile, steps, schedule, precision, memory budget — normally
    all of them) go to a single :func:`matfun.tiled_newton_schulz_many` call,
    which batches equal-shape tiles across layers::

        B ← B.lerp(g, 1 − μ);  U ← g.lerp(B, μ) if nesterov else B
        O ← TiledNS_{T,K}(U)
        θ ← θ(1 − lr·λ) − AdjustLR(lr, tile) · O

    Parameters
    ----------
    params : iterable
        As for :class:`matfun.optim.Muon` (matrices, conv kernels flattened to
        ``(out, in·k·k)``; ``(name, tensor)`` pairs accepted).
    lr : float, default 1e-3
    weight_decay : float, default 0.1
        Decoupled: ``θ ← θ(1 − lr·λ)``.
    momentum : float in [0, 1), default 0.95
    nesterov : bool, default True
    tile : int, (Th, Tw), None, callable or list of (start_step, tile), default 512
        ``T`` or ``(Th, Tw)``: tile size; ``None``: full matrices (plain Muon);
        a callable ``step ↦ tile`` (``step`` = 0-based count of steps taken);
        or a schedule ``[(0, None), (200, 512)]`` — each entry's tile is used
        from its start step on (full matrices for steps 0–199, then ``T=512``);
        the schedule must start at 0.  Change it mid-training with
        :meth:`set_tile` or ``param_group["tile"]``.  A lambda cannot be
        pickled by ``torch.save``; use the list form in checkpoints.
    ns_coefficients : schedule, default Jordan
        Alias ``coefficients``.
    ns_steps : int, default 5
        Alias ``steps``.
    adjust_lr_fn : {"match_rms_adamw", "original", None}, default "match_rms_adamw"
        Applied to the *effective tile* ``min(Th, H) × min(Tw, W)`` (the whole
        matrix for ``tile=None``): ``"match_rms_adamw"`` gives HiMuon's
        ``lr·0.2·√max(Th, Tw)``; ``"original"`` (or None) ``lr·√max(1, Th/Tw)``.
        One factor per parameter: ragged edge tiles use the nominal effective
        tile's factor, as the interior tiles do (their per-entry RMS is the
        same up to the ragged block's aspect ratio).
    precision : str or None, keyword-only
        As for :class:`matfun.optim.Muon` (default bf16 on CUDA, float32 elsewhere).
    memory_budget : int, None or "auto", default "auto", keyword-only
        Bytes of working memory per batched chunk, passed to
        :func:`matfun.tiled_newton_schulz_many` (``"auto"``: cache-sized chunks
        on CPU, one batch on GPU; ``None``: unbounded).
    check_finite : bool, default True, keyword-only

    Notes
    -----
    * With a tile at least as large as every parameter (or ``tile=None``) and
      ``adjust_lr_fn="match_rms_adamw"`` HiMuon equals
      ``Muon(..., adjust_lr_fn="match_rms_adamw", eps=0)``.  HiMuon has no ``eps``
      floor: every tile is normalised scale-invariantly and zero tiles stay zero.
    * The optimizer-level step count is kept in each param group as
      ``"step_count"`` (saved by ``state_dict``); groups added later inherit
      the current count.
    """

    _name = "HiMuon"

    def __init__(
        self,
        params: Iterable,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        tile: Any = 512,
        ns_coefficients: Any = None,
        ns_steps: int | None = None,
        adjust_lr_fn: str | None = "match_rms_adamw",
        *,
        precision: str | None = None,
        memory_budget: int | str | None = "auto",
        coefficients: Any = None,
        steps: int | None = None,
        check_finite: bool = True,
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "tile": tile,
            "ns_coefficients": pick_alias("ns_coefficients", ns_coefficients, "coefficients", coefficients, JORDAN),
            "ns_steps": pick_alias("ns_steps", ns_steps, "steps", steps, 5),
            "adjust_lr_fn": adjust_lr_fn,
            "precision": precision,
            "memory_budget": memory_budget,
            "check_finite": check_finite,
            "step_count": 0,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_common(group)
        check_adjust_lr_fn(group["adjust_lr_fn"])
        check_tile_spec(group["tile"])
        check_memory_budget(group["memory_budget"])

    def set_tile(self, tile: Any, group: int | None = None) -> None:
        """Set the tile specification of every param group (or of group ``group``)."""
        check_tile_spec(tile)
        groups = self.param_groups if group is None else [self.param_groups[group]]
        for g in groups:
            g["tile"] = tile

    def current_tile(self, group: int = 0) -> Tile:
        """The tile the next :meth:`step` uses for param group ``group``."""
        g = self.param_groups[group]
        return resolve_tile(g["tile"], g["step_count"])

    def _step_groups(self, work, stats) -> None:
        jobs: dict[tuple, list[tuple[dict, Tensor, Tensor]]] = {}
        for group, params, grads in work:
            tile = resolve_tile(group["tile"], group["step_count"])
            if params:
                updates = self._momentum(group, params, grads)
                schedule = resolve_coefficients(group["ns_coefficients"])
                for p, u in zip(params, updates):
                    key = (
                        tile,
                        group["ns_steps"],
                        schedule,
                        default_precision(group["precision"], u.device),
                        group["memory_budget"],
                    )
                    jobs.setdefault(key, []).append((group, p, as_matrix(u)))
        for (tile, steps, schedule, precision, budget), members in jobs.items():
            mats = [m for _, _, m in members]
            call_tile = tile
            if tile is None:  # full matrices: a tile as large as every matrix
                call_tile = (max(m.shape[0] for m in mats), max(m.shape[1] for m in mats))
            outs = matfun.tiled_newton_schulz_many(
                mats, call_tile, steps, schedule, precision, memory_budget=budget, check_finite=False
            )
            for (group, p, _), o in zip(members, outs):
                lr = to_scalar(group["lr"])
                eff = effective_tile(tile, matrix_shape(p))
                self._apply(p, o, lr, adjust_lr(lr, group["adjust_lr_fn"], eff), group["weight_decay"])
        for group, _, _ in work:
            group["step_count"] += 1


def check_memory_budget(budget: Any) -> None:
    if budget in (None, "auto"):
        return
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, None or 'auto', got {budget!r}")
