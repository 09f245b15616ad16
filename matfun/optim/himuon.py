"""HiMuon: Muon with tile-wise Newton–Schulz, cross-layer batching and a tile schedule.

References
----------
*Hierarchical Muon (HiMuon)*: tile-wise Newton–Schulz with per-tile Frobenius
normalisation, cross-layer batching of equal-shape tiles, memory-bounded chunks,
a per-tile learning-rate scale ``0.2·√max(Th, Tw)`` and a tile-size schedule; the
official optimizer runs one full Newton–Schulz on a parameter no larger than a tile
and scales its learning rate by the parameter's own shape.
K. Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024).
``torch.optim.Muon`` (momentum recurrence, decoupled weight decay).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

import matfun

from ._base import MatrixOptimizer, ParamStep
from ._common import JORDAN, default_precision, pick_alias, resolve_coefficients
from ._sharded import is_sharded, run_sharded
from ._tiles import Tile, check_tile_spec, check_tiling, effective_tile, resolve_tile, tile_plan
from .muon import check_common

__all__ = ["HiMuon", "check_tile_spec", "effective_tile", "resolve_tile"]


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
        O ← TiledNS_{T,K}(U)                       # NS_K(U) if H·W ≤ Th·Tw
        θ ← θ(1 − lr·λ) − AdjustLR(lr, tile) · O   # AdjustLR(lr, (H, W)) if H·W ≤ Th·Tw

    Like the official HiMuon optimizer, a parameter no larger than one tile
    (``H·W ≤ Th·Tw``) gets one full Newton–Schulz and the learning-rate rule of
    its own shape (``small_matrix="full"``).  The default rule is
    ``"match_rms_adamw"``, ``lr·0.2·√max(Th, Tw)``: **not** Muon's ``"original"``,
    so ``lr=0.02`` on a 256×256 layer steps 3.2× further than
    :class:`matfun.optim.Muon` with ``lr=0.02`` does.

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
        ``T`` or ``(Th, Tw)``: tile size; ``None``: full matrices — Muon's
        orthogonalisation, but still HiMuon's lr rule ``adjust_lr_fn`` on each
        matrix's own shape (by default ``"match_rms_adamw"``, ``lr·0.2·√max(H, W)``;
        pass ``adjust_lr_fn="original"`` for :class:`matfun.optim.Muon`'s step size);
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
    adjust_lr_fn : {"match_rms_adamw", "original", "spectral_norm", None}, default "match_rms_adamw"
        Applied to the *effective tile* ``min(Th, H) × min(Tw, W)`` of a tiled
        parameter, and to the parameter's own shape ``H × W`` when it gets a full
        Newton–Schulz (``tile=None``, or ``H·W ≤ Th·Tw``): ``"match_rms_adamw"``
        gives HiMuon's ``lr·0.2·√max(Th, Tw)``; ``"original"`` (or None)
        ``lr·√max(1, Th/Tw)``; ``"spectral_norm"`` (dion) ``lr·√(Th/Tw)``.
        One factor per parameter: ragged edge tiles use the nominal effective
        tile's factor, as the interior tiles do (their per-entry RMS is the
        same up to the ragged block's aspect ratio).
    small_matrix : {"full", "tile"}, default "full", keyword-only
        ``"full"`` (the official optimizer's rule): a parameter with
        ``H·W ≤ Th·Tw`` gets one full Newton–Schulz and the lr factor of its own
        shape — e.g. 64×256 at ``T=128``: full NS and ``0.2·√256 = 3.20``.
        ``"tile"``: strict tiling, every parameter goes through the tile map
        (:func:`matfun.tiled_newton_schulz`) — 64×256 at ``T=128`` is two 64×128
        tiles and the factor ``0.2·√128 = 2.26``; the two updates differ by 0.62
        (relative Frobenius distance, Gaussian gradient).
    precision : str or None, keyword-only
        As for :class:`matfun.optim.Muon` (default bf16 on CUDA, float32 elsewhere).
    memory_budget : int, None or "auto", default "auto", keyword-only
        Bytes of working memory per batched chunk, passed to
        :func:`matfun.tiled_newton_schulz_many` (``"auto"``: cache-sized chunks
        on CPU, one batch on GPU; ``None``: unbounded).
    check_finite : bool, default True, keyword-only

    Notes
    -----
    * With a tile at least as large as every parameter (or ``tile=None``)
      HiMuon equals ``Muon(..., eps=0)`` with the same ``adjust_lr_fn``
      (``"match_rms_adamw"`` by default).  HiMuon has no ``eps``
      floor: every tile is normalised scale-invariantly and zero tiles stay zero.
    * Statistics (``"momentum_buffer"``) are float32 for float16/bfloat16
      parameters; every :meth:`step` is all or nothing (see :class:`matfun.optim.Muon`).
    * The optimizer-level step count is kept in each param group as
      ``"step_count"`` (saved by ``state_dict``); groups added later inherit
      the current count.
    * FSDP2: parameters sharded by ``torch.distributed.fsdp.fully_shard``
      (DTensor ``Shard(0)`` on a 1-D mesh) are supported on gloo and nccl; whole tile rows
      are orthogonalised where they lie (no communication when every shard holds whole tile
      rows; only the rows of cut tiles move otherwise), whole matrices by one owner each.
      The update equals the single-device one (``tests/test_sharding.py``);
      ``last_step_communication`` holds the bytes the last step moved
      (:class:`matfun.sharding.Communication`).  Other placements (tensor
      parallel) raise at construction, naming the parameter.
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
        small_matrix: str = "full",
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
            "small_matrix": small_matrix,
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
        super()._check_group(group)
        check_common(group)
        check_tiling(group)
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

    def _group_context(self, group: dict[str, Any]) -> Tile:
        return resolve_tile(group["tile"], group["step_count"])

    def _prepare(self, item: ParamStep, tile: Tile) -> None:
        super()._prepare(item, tile)
        item.tile, item.lr_shape = tile_plan(tile, item.lr_shape, item.group["small_matrix"])

    def _orthogonalize(self, items: list[ParamStep], extras: list[float]) -> None:
        """One :func:`matfun.tiled_newton_schulz_many` call per configuration (normally one per
        step, two when some parameters are small enough for a full Newton–Schulz)."""
        jobs: dict[tuple, list[ParamStep]] = {}
        configs: dict[tuple[int, torch.device], tuple] = {}  # per group and device, computed once
        for item in items:
            group = item.group
            where = (id(group), item.matrix.device)
            config = configs.get(where)
            if config is None:
                config = configs[where] = (
                    group["ns_steps"],
                    resolve_coefficients(group["ns_coefficients"]),
                    default_precision(group["precision"], item.matrix.device),
                    group["memory_budget"],
                )
            jobs.setdefault((item.tile, *config, is_sharded(item.direction)), []).append(item)
        for (tile, steps, schedule, precision, budget, sharded), members in jobs.items():

            def run(
                mats: list[Tensor], tile=tile, steps=steps, schedule=schedule, precision=precision, budget=budget
            ) -> list[Tensor]:
                if tile is None:  # full matrices: a tile as large as every matrix
                    tile = (max(m.shape[0] for m in mats), max(m.shape[1] for m in mats))
                return matfun.tiled_newton_schulz_many(
                    mats, tile, steps, schedule, precision, memory_budget=budget, check_finite=False
                )

            if sharded:  # whole tile rows where they lie; whole matrices with one owner each
                outs, comm = run_sharded(
                    [item.matrix for item in members], [None if tile is None else tile[0]] * len(members), run
                )
                self._communication += comm
            else:
                outs = run([item.matrix for item in members])
            for item, out in zip(members, outs):
                item.update = out


def check_memory_budget(budget: Any) -> None:
    if budget in (None, "auto"):
        return
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, None or 'auto', got {budget!r}")
