"""Muon on :class:`matfun.NewtonSchulz`: torch.optim.Muon's algorithm with any schedule,
step count and compute precision.

References
----------
K. Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024),
https://kellerjordan.github.io/posts/muon/
J. Liu et al., *Muon is Scalable for LLM Training* (2025), arXiv:2502.16982
(the ``"match_rms_adamw"`` learning-rate adjustment).
G. Yang, J. B. Simon, J. Bernstein, *A Spectral Condition for Feature Learning* (2023),
arXiv:2310.17813 (the ``"spectral_norm"`` adjustment, as in Microsoft's dion).
``torch.optim.Muon`` (PyTorch ≥ 2.9), whose defaults and update order this class follows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..newton_schulz import NewtonSchulz
from ._base import MatrixOptimizer, ParamStep
from ._common import (
    JORDAN,
    check_adjust_lr_fn,
    check_bool,
    check_lr,
    check_nonneg,
    check_ns_schedule,
    check_precision,
    check_unit_interval,
    default_precision,
    host_values,
    pick_alias,
    resolve_coefficients,
)
from ._sharded import by_shape, is_sharded, run_sharded

__all__ = ["Muon"]

#: matrices up to this many entries are stacked into one batched map call per shape
BATCH_MAX_NUMEL = 1 << 18


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
        tuple repeats).  Alias: ``coefficients``.  A schedule whose iterates grow
        singular values beyond 1e7 within ``ns_steps`` is rejected (its products
        would overflow).
    eps : float, default 1e-7
        torch.optim.Muon's floor on the normalisation: the map's input is
        ``U / max(‖U‖_F, eps)``.  matfun's own normalisation is exactly scale
        invariant; when ``0 < ‖U‖_F < eps`` the floor is applied exactly by
        running the map on ``[[U, 0], [0, √(eps² − ‖U‖²)]]`` (a block-diagonal
        matrix of Frobenius norm ``eps`` on which Newton–Schulz acts block by
        block) and keeping the ``U`` block.  ``eps=0`` disables the floor.
    ns_steps : int, default 5
        Newton–Schulz steps ``K`` (< 100).  Alias: ``steps``.
    adjust_lr_fn : {None, "original", "match_rms_adamw", "spectral_norm"}, default None
        Learning-rate rule for the ``A × B`` (flattened) parameter.  The default
        ``None`` is ``"original"``, torch.optim.Muon's: ``lr·√max(1, A/B)``
        (``lr`` itself for square and wide matrices).  ``"match_rms_adamw"``
        (Liu et al. 2025; HiMuon's default): ``lr·0.2·√max(A, B)``.
        ``"spectral_norm"`` (dion's Muon and Muon²; Yang et al. 2023):
        ``lr·√(A/B)`` = ``lr·√(fan_out/fan_in)``.  On a 256×256 layer the same
        ``lr`` gives steps 3.2× larger under ``"match_rms_adamw"`` than under
        ``"original"``.
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
    * State per parameter: ``"momentum_buffer"`` (same name and meaning as torch's),
      kept in float32 for float16/bfloat16 parameters (torch keeps the
      parameter's dtype) and in the parameter's dtype otherwise.
    * Every :meth:`step` is all or nothing: a bad gradient, hyperparameter or
      statistic in any group raises before anything is written.
    * :meth:`load_state_dict` accepts torch.optim.Muon checkpoints (same
      hyperparameters and state); ``precision`` and ``check_finite``, which
      torch's lack, take this optimizer's constructor values.
    * FSDP2: parameters sharded by ``torch.distributed.fsdp.fully_shard``
      (DTensor ``Shard(0)`` on a 1-D mesh) are supported on gloo and nccl; each matrix is
      orthogonalised by one owner rank, balanced by cost (gather, NS, scatter back).
      The update equals the single-device one (``tests/test_sharding.py``);
      ``last_step_communication`` holds the bytes the last step moved
      (:class:`matfun.sharding.Communication`).  Other placements (tensor
      parallel) raise at construction, naming the parameter.

    Examples
    --------
    >>> import torch
    >>> from matfun.optim import Muon, split_params
    >>> model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    >>> hidden, rest = split_params(model)  # hidden weights; biases and the head go to AdamW
    >>> opt = Muon(hidden, lr=0.02)
    >>> adamw = torch.optim.AdamW(rest, lr=3e-4)
    """

    _name = "Muon"
    # torch.optim.Muon's checkpoints load: matfun's own hyperparameters come from the constructor
    _filled_from_defaults = ("precision", "check_finite")

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
        super()._check_group(group)
        check_common(group)
        check_nonneg("eps", group["eps"])

    def _sync_extras(self, items: list[ParamStep]) -> list[Tensor]:
        """‖U‖_F of each direction of a group with an ``eps`` floor (fetched with the finiteness
        flags, in the same host synchronisation)."""
        return self._direction_norms([item for item in items if item.group["eps"] > 0 and not is_sharded(item.matrix)])

    def _orthogonalize(self, items: list[ParamStep], extras: list[float]) -> None:
        norms = iter(extras)
        by_group: dict[tuple[int, bool], list[ParamStep]] = {}
        for item in items:
            by_group.setdefault((id(item.group), is_sharded(item.matrix)), []).append(item)
        for (_, sharded), members in by_group.items():
            group = members[0].group

            def run(mats: list[Tensor], norms: list[float], group: dict = group) -> list[Tensor]:
                return orthogonalize(
                    mats, group["ns_steps"], group["ns_coefficients"], group["precision"], group["eps"], norms
                )

            def owned(mats: list[Tensor], group: dict = group, run=run) -> list[Tensor]:
                """On the owner: whole matrices, batched by shape unless one needs the eps floor."""
                norms = host_values([torch.linalg.vector_norm(m) for m in mats])
                if any(0 < n < group["eps"] for n in norms):
                    return run(mats, norms)
                return by_shape(mats, lambda X: run([X], [math.inf])[0])

            if sharded:  # one owner per matrix, balanced by cost
                outs, comm = run_sharded([item.matrix for item in members], [None] * len(members), owned)
                self._communication += comm
            else:
                outs = orthogonalize(
                    ParamStep.take_directions(members),
                    group["ns_steps"],
                    group["ns_coefficients"],
                    group["precision"],
                    group["eps"],
                    [next(norms) if group["eps"] > 0 else math.inf for _ in members],
                    maps=self._maps,
                )
            for item, out in zip(members, outs):
                item.update = out


def check_common(group: dict[str, Any]) -> None:
    """Validate the hyperparameters every matrix optimizer shares."""
    check_lr(group["lr"])
    check_nonneg("weight decay", group["weight_decay"])
    check_unit_interval("momentum", group["momentum"])
    check_bool("nesterov", group["nesterov"])
    check_ns_schedule(group["ns_coefficients"], group["ns_steps"])
    check_precision(group["precision"])
    check_adjust_lr_fn(group["adjust_lr_fn"])


def orthogonalize(
    mats: list[Tensor],
    steps: int,
    coefficients: Any,
    precision: str | None,
    eps: float,
    norms: list[float],
    maps: dict | None = None,
) -> list[Tensor]:
    """``NS_K(U / max(‖U‖_F, eps))`` for each matrix, through :class:`matfun.NewtonSchulz`.

    ``norms``: the host values of ``‖U‖_F`` (only compared with ``eps``).  Matrices of
    equal shape, dtype and device above the floor go through one batched call (the map
    normalises each matrix of a batch by its own norm).  ``maps`` caches the map objects
    across calls (keyed by steps, schedule and precision).  Each entry of ``mats`` is set
    to None once it has been read (its memory is freed if the list held the only reference).
    """
    schedule = resolve_coefficients(coefficients)
    maps = {} if maps is None else maps
    outs: list[Tensor | None] = [None] * len(mats)
    batches: dict[tuple, list[int]] = {}
    for k, (X, n) in enumerate(zip(mats, norms)):
        prec = default_precision(precision, X.device)
        key = (steps, schedule, prec)
        ns = maps.get(key) or maps.setdefault(key, NewtonSchulz(steps, schedule, prec))
        if 0 < n < eps:
            # [[U, 0], [0, √(eps² − ‖U‖²)]] divided by eps (the map is scale invariant): every
            # entry stays finite whatever eps is (eps² overflows for eps above ~1e154)
            H, W = X.shape
            aug = X.new_zeros((H + 1, W + 1))
            aug[:H, :W] = X / eps
            aug[H, W] = math.sqrt(max(1.0 - (n / eps) ** 2, 0.0))
            outs[k] = ns(aug, check_finite=False)[:H, :W]
            mats[k] = None  # type: ignore[call-overload]
        else:
            # NS runs on the wide orientation: a tall matrix joins the batch of its transpose's shape;
            # large matrices run alone (stacking them costs a copy and saves little)
            shape = tuple(sorted(X.shape)) if X.numel() <= BATCH_MAX_NUMEL else ("alone", k)
            batches.setdefault((key, shape, X.dtype, X.device), []).append(k)
    for (key, *_), ks in batches.items():
        if len(ks) == 1:
            X, mats[ks[0]] = mats[ks[0]], None  # type: ignore[call-overload]
            outs[ks[0]] = maps[key](X, check_finite=False)
            del X
            continue
        tall = [mats[k].shape[0] > mats[k].shape[1] for k in ks]
        stacked = torch.stack([mats[k].mT if t else mats[k] for k, t in zip(ks, tall)])
        for k in ks:
            mats[k] = None  # type: ignore[call-overload]
        for k, t, out in zip(ks, tall, maps[key](stacked, check_finite=False).unbind(0)):
            outs[k] = out.mT if t else out
    return outs  # type: ignore[return-value]
