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

import torch
from torch import Tensor

import matfun
from matfun.precondition import _quotient64

from ._base import MatrixOptimizer, ParamStep
from ._common import (
    JORDAN,
    as_matrix,
    check_bool,
    check_nonneg,
    check_unit_interval,
    default_precision,
    matrix_shape,
    pick_alias,
    resolve_coefficients,
)
from ._sharded import all_reduce_sum, by_shape, is_sharded, like, local, run_sharded
from ._tiles import Tile, check_tiling, resolve_tile, tile_plan
from .muon import BATCH_MAX_NUMEL, check_common

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
    adjust_lr_fn : {None, "original", "match_rms_adamw", "spectral_norm"}, default None
        The rules of :class:`matfun.optim.Muon`; the default ``None`` is
        ``"original"``, ``lr·√max(1, A/B)``.  dion's Muon² uses
        ``"spectral_norm"``, ``lr·√(fan_out/fan_in)``.  Applied to the (flattened)
        matrix shape, or to the effective tile ``min(Th, H) × min(Tw, W)`` when
        the parameter is tiled.
    tile : int, (Th, Tw), None, callable or list of (start_step, tile), default None
        ``None``: full Newton–Schulz; otherwise tile-wise NS (HiMuon) on the
        preconditioned momentum, with the same specification forms and the same
        small-matrix rule as :class:`matfun.optim.HiMuon`.
    small_matrix : {"full", "tile"}, default "full", keyword-only
        As for :class:`matfun.optim.HiMuon` (only used with a ``tile``).
    precision : str or None, keyword-only
        As for :class:`matfun.optim.Muon` (default bf16 on CUDA, float32 elsewhere).
        The preconditioning runs in the dtype of the statistics.
    check_finite : bool, default True, keyword-only

    Notes
    -----
    State per parameter: ``"momentum_buffer"``, and ``"exp_avg_sq"`` (full) or
    ``"exp_avg_sq_row"``/``"exp_avg_sq_col"`` (factorised), all in float32 for
    float16/bfloat16 parameters (the parameter's dtype otherwise): a float16
    ``G ⊙ G`` would overflow for entries above 256.  A statistic that would
    overflow even so (float32 entries above about 1.8e19) is reported by
    parameter name before anything is written: every :meth:`step` is all or
    nothing.  Each parameter is mapped by its own call (no cross-layer batching).
    Changing ``factorized`` of a group that has taken steps (or loading a state
    dict saved with the other setting) restarts the second moment at the next
    step; the other form's statistics are dropped then.

    FSDP2 (``fully_shard``, DTensor ``Shard(0)``): the momentum, the full second
    moment and Muon²-F's row statistics stay sharded like the parameter; the
    column statistics are summed across ranks (a replicated vector); the
    preconditioned matrix is orthogonalised by one owner per matrix (or, with a
    tile, in whole tile rows where they lie).  The update equals the
    single-device one; ``last_step_communication`` holds the bytes moved.
    """

    _name = "Muon2"
    _state_keys = ("momentum_buffer", "exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col")

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
        small_matrix: str = "full",
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
            "small_matrix": small_matrix,
            "precision": precision,
            "check_finite": check_finite,
            "step_count": 0,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_common(group)
        check_unit_interval("beta2", group["beta2"])
        check_nonneg("eps", group["eps"])
        check_bool("factorized", group["factorized"])
        check_tiling(group)

    def _state_shapes(self, p: Tensor) -> dict[str, tuple[int, ...]]:
        H, W = matrix_shape(p)
        return {**super()._state_shapes(p), "exp_avg_sq": (H, W), "exp_avg_sq_row": (H,), "exp_avg_sq_col": (W,)}

    def _check_state(self, name: str, p: Tensor, group: dict[str, Any], state: dict[str, Tensor]) -> None:
        if ("exp_avg_sq_row" in state) != ("exp_avg_sq_col" in state):
            raise ValueError(f"the state of parameter {name} has only one of 'exp_avg_sq_row', 'exp_avg_sq_col'")
        forms = [f for f in (False, True) if _MOMENT_KEYS[f][0] in state]
        if len(forms) == 2:
            raise ValueError(f"the state of parameter {name} has both the full and the factorized second moment")
        if state and not forms:
            raise ValueError(
                f"the state of parameter {name} lacks the second moment ({_MOMENT_KEYS[group['factorized']]})"
            )
        for key in _MOMENT_KEYS[True] + _MOMENT_KEYS[False]:
            if key in state and bool((state[key] < 0).any()):
                raise ValueError(f"state {key!r} of parameter {name} has negative entries (a second moment)")

    def _group_context(self, group: dict[str, Any]) -> Tile:
        return resolve_tile(group["tile"], group["step_count"])

    def _prepare(self, item: ParamStep, tile: Tile) -> None:
        """Momentum (base class), then the second moment folded with ``G``, out of place in float32
        or wider (a float16 ``G ⊙ G`` overflows for entries above 256)."""
        super()._prepare(item, tile)
        group, state = item.group, self.state[item.param]
        sharded = is_sharded(item.param)
        # FSDP2 row shards: every statistic on this rank's rows; the column sums of G²
        # are summed over ranks (Muon²-F's column statistic is replicated)
        G = as_matrix(local(item.grad).to(item.matrix.dtype))
        keys = _MOMENT_KEYS[group["factorized"]]
        beta2 = group["beta2"]
        old = [local(state[k]).to(G.dtype) for k in keys] if all(k in state for k in keys) else None
        # out of place: the finiteness check comes first, in one sync
        if group["factorized"]:  # SecondMoment.update's recurrence on the row and column sums of G⊙G
            G2 = G.square()
            cols = G2.sum(-2)
            fresh = (G2.sum(-1), all_reduce_sum(cols, item.param) if sharded else cols)
            if old is None:
                new = [(1 - beta2) * f for f in fresh]
            else:
                new = [beta2 * v + (1 - beta2) * f for v, f in zip(old, fresh)]
        else:  # torch.optim.Adam's exp_avg_sq, op for op: V·β₂ + (1 − β₂)·G⊙G by one addcmul
            start = torch.zeros_like(G) if old is None else old[0] * beta2
            new = [start.addcmul_(G, G, value=1 - beta2)]
        item.new_state.update(
            (k, like(v, item.param) if sharded and k != "exp_avg_sq_col" else v) for k, v in zip(keys, new)
        )
        item.extra = new  # the second moment's new statistics (see _second_moment)
        item.tile, item.lr_shape = tile_plan(tile, item.lr_shape, group["small_matrix"])

    def _orthogonalize(self, items: list[ParamStep], extras: list[float]) -> None:
        sharded = [item for item in items if is_sharded(item.matrix)]
        if sharded:
            self._orthogonalize_sharded(sharded)
        # eps = 0 keeps the checked per-matrix path (a zero of V must raise, naming the parameter)
        full = [item for item in items if item.tile is None and item.group["eps"] > 0 and not is_sharded(item.matrix)]
        self._orthogonalize_full(full)
        for item in items:
            if item.update is not None or is_sharded(item.matrix):
                continue
            group = item.group
            try:
                item.update = matfun.preconditioned_newton_schulz(
                    item.matrix,
                    _second_moment(item),
                    group["eps"],
                    group["ns_steps"],
                    resolve_coefficients(group["ns_coefficients"]),
                    tile=item.tile,
                    precision=default_precision(group["precision"], item.matrix.device),
                    check_finite=False,
                )
            except ValueError as error:
                raise ValueError(
                    f"{self._name}: parameter {item.name}: {error}; nothing was updated in this step"
                ) from error

    def _orthogonalize_full(self, items: list[ParamStep]) -> None:
        """Full (untiled) Newton–Schulz on ``M ⊘ (√V + ε)``: :class:`matfun.Preconditioned`'s
        arithmetic, with the matrices of one shape (either orientation), dtype and configuration
        stacked into one batched quotient and one batched map call.  ``V`` needs no check here:
        it was checked finite with the gradients, and is non-negative by construction (a loaded
        state is checked on loading)."""
        batches: dict[tuple, list[ParamStep]] = {}
        for item in items:
            group = item.group
            prec = default_precision(group["precision"], item.matrix.device)
            key = (group["ns_steps"], resolve_coefficients(group["ns_coefficients"]), prec)
            shape = tuple(sorted(item.matrix.shape)) if item.matrix.numel() <= BATCH_MAX_NUMEL else id(item)
            batches.setdefault((key, group["eps"], shape, item.matrix.dtype, item.matrix.device), []).append(item)
        for (key, eps, *_), members in batches.items():
            ns = self._maps.get(key) or self._maps.setdefault(key, matfun.NewtonSchulz(*key))
            tall = [m.matrix.shape[0] > m.matrix.shape[1] for m in members]
            M = _stack([m.matrix.mT if t else m.matrix for m, t in zip(members, tall)])
            Vs = [m.extra[0] if len(m.extra) == 1 else _second_moment(m).V for m in members]
            V = _stack([v.mT if t else v for v, t in zip(Vs, tall)])
            del Vs
            for m in members:  # M and V hold them now: the directions are freed once Q exists
                m.direction = m.extra = None
            dtype = M.dtype
            X, precision = ns._prepare(M, False)
            del M
            Q = _quotient(X, V, eps).to(X.dtype)
            del X, V
            out = ns._compute_final(Q, precision).to(dtype)
            for m, t, o in zip(members, tall, out.unbind(0)):
                m.update = o.mT if t else o

    def _orthogonalize_sharded(self, items: list[ParamStep]) -> None:
        """Precondition each rank's rows, then Newton–Schulz through :mod:`matfun.sharding`
        (one owner per matrix, or whole tile rows where they lie)."""
        jobs: dict[tuple, list[ParamStep]] = {}
        for item in items:
            group = item.group
            key = (
                item.tile,
                group["ns_steps"],
                resolve_coefficients(group["ns_coefficients"]),
                default_precision(group["precision"], item.matrix.device),
            )
            jobs.setdefault(key, []).append(item)
        for (tile, steps, schedule, precision), members in jobs.items():
            directions = []
            for item in members:
                try:
                    directions.append(like(_second_moment(item).precondition(local(item.matrix)), item.matrix))
                except ValueError as error:
                    raise ValueError(
                        f"{self._name}: parameter {item.name}: {error}; nothing was updated in this step"
                    ) from error

            def run(mats: list[Tensor], tile=tile, steps=steps, schedule=schedule, precision=precision) -> list[Tensor]:
                if tile is None:  # on the owner: one batched call per shape
                    return by_shape(
                        mats, lambda X: matfun.newton_schulz(X, steps, schedule, precision, check_finite=False)
                    )
                return matfun.tiled_newton_schulz_many(mats, tile, steps, schedule, precision, check_finite=False)

            outs, comm = run_sharded(directions, [None if tile is None else tile[0]] * len(members), run)
            self._communication += comm
            for item, out in zip(members, outs):
                item.update = out


def _second_moment(item: ParamStep) -> matfun.SecondMoment:
    """The parameter's :class:`matfun.SecondMoment` after this step (built only where a map needs
    one: the tiled, factorized, sharded and ``eps = 0`` paths)."""
    group = item.group
    moment = matfun.SecondMoment(beta2=group["beta2"], eps=group["eps"], factorized=group["factorized"])
    moment.shape = tuple(item.matrix.shape)
    if moment.factorized:
        moment.row, moment.col = item.extra
    else:
        (moment.full,) = item.extra
    return moment


def _stack(mats: list[Tensor]) -> Tensor:
    """The matrices as one ``(n, H, W)`` batch: a view for one matrix, a stacked copy otherwise."""
    return mats[0][None] if len(mats) == 1 else torch.stack(mats)


def _quotient(X: Tensor, V: Tensor, eps: float) -> Tensor:
    """``X ⊘ (√V + ε)`` in float64, times a power of two per matrix where that is needed to bring
    it into float32's normal range: :func:`matfun.precondition._quotient64`'s scaled form up to a
    power of two per matrix (which the normalised map does not see, the scaling being exact), in
    fewer operations.  For float32 or narrower ``X`` (and ``ε > 0``, which the caller ensures) the
    float64 quotient itself can neither overflow nor underflow (``|X| ≤ 3.4e38``,
    ``√V + ε ≥ ε``); otherwise the exact scaled form is used."""
    if X.dtype == torch.float64:
        return _quotient64(X, V, eps, scaled=True)
    Q = X.to(torch.float64).div_(V.to(torch.float64, copy=True).sqrt_().add_(eps))  # V may be the new state
    amax = Q.abs().amax(dim=(-2, -1), keepdim=True)
    # on CPU (where reading amax costs no device synchronisation) a quotient that float32 holds as
    # it is skips the scaling pass: then only entries below 2^-100·max|Q| may round differently
    # (to float32 subnormals), far below what the normalised map resolves
    if Q.device.type == "cpu" and bool(((amax > 2.0**-100) & (amax < 2.0**100)).all()):
        return Q
    _, exponent = torch.frexp(amax)
    return torch.ldexp(Q, -exponent.to(torch.float64))


#: state keys of the second moment, by ``factorized``
_MOMENT_KEYS = {False: ("exp_avg_sq",), True: ("exp_avg_sq_row", "exp_avg_sq_col")}
