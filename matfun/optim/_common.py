"""Shared machinery of the :mod:`matfun.optim` optimizers.

Everything that Muon, HiMuon and Muon² have in common lives here: argument
validation, the parameter checks at construction (matrices only; conv kernels
flattened), the gradient checks in ``step`` (sparse, complex, NaN/Inf — with the
parameter's name), torch.optim.Muon's momentum recurrence, its learning-rate
shape adjustment and its decoupled weight decay.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._backend import PRECISIONS
from ..schedules import Schedule, check_steps, get_schedule

#: torch.optim.Muon's Newton–Schulz coefficients (Keller Jordan's quintic).
JORDAN = (3.4445, -4.7750, 2.0315)

ADJUST_LR_FNS = ("original", "match_rms_adamw")


# --------------------------------------------------------------------------- validation


def check_lr(lr: Any) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        lr = float(lr)
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool) or not lr >= 0.0 or not math.isfinite(lr):
        raise ValueError(f"Learning rate should be a finite number >= 0 but is: {lr!r}")


def check_nonneg(name: str, value: Any) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0.0 or not math.isfinite(value):
        raise ValueError(f"{name} should be a finite number >= 0 but is: {value!r}")


def check_unit_interval(name: str, value: Any) -> None:
    """``value`` in ``[0, 1)`` (a momentum or EMA factor)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} should be in [0, 1) but is: {value!r}")


def check_adjust_lr_fn(fn: Any, allowed: tuple = (None,) + ADJUST_LR_FNS) -> None:
    if fn not in allowed:
        raise ValueError(f"Adjust learning rate function {fn!r} is not supported; choose one of {allowed}")


def check_precision(precision: Any) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS} or None")


def resolve_coefficients(coefficients: Any) -> Schedule:
    """A schedule from a name, a :class:`Schedule`, tuples ``(a, b, c)``, or one flat
    ``(a, b, c)`` triple as torch.optim.Muon takes it."""
    if (
        isinstance(coefficients, (tuple, list))
        and len(coefficients) == 3
        and all(isinstance(v, numbers.Real) for v in coefficients)
    ):
        coefficients = (tuple(float(v) for v in coefficients),)
    return get_schedule(coefficients)


def check_ns_steps(steps: Any) -> int:
    steps = check_steps(steps)
    if steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    return steps


def pick_alias(name: str, value: Any, alias: str, alias_value: Any, default: Any) -> Any:
    """Resolve ``ns_steps``/``steps`` style aliases (torch name first, matfun name second)."""
    if alias_value is not None:
        if value is not None and value != alias_value:
            raise ValueError(f"pass only one of {name}= and {alias}= (they are aliases)")
        return alias_value
    return default if value is None else value


def default_precision(precision: str | None, device: torch.device) -> str:
    """``None`` → ``"bfloat16"`` on CUDA (as torch.optim.Muon), ``"float32"`` elsewhere.

    Native bfloat16 matrix products on CPU are hundreds of times slower than
    float32, so the CPU default is float32; ``"bfloat16"`` or
    ``"bfloat16-emulated"`` can be asked for explicitly.
    """
    if precision is not None:
        return precision
    return "bfloat16" if device.type == "cuda" else "float32"


# --------------------------------------------------------------------------- shapes and lr


def as_matrix(t: Tensor) -> Tensor:
    """A parameter-shaped tensor as the matrix the map sees: conv kernels ``(out, in, k, k)``
    flatten to ``(out, in·k·k)`` (a view when contiguous)."""
    return t if t.ndim == 2 else t.reshape(t.shape[0], -1)


def matrix_shape(p: Tensor) -> tuple[int, int]:
    return (int(p.shape[0]), int(math.prod(p.shape[1:])))


def adjust_lr(lr: float, adjust_lr_fn: str | None, shape: tuple[int, int]) -> float:
    """torch.optim.Muon's shape adjustment: ``"original"`` (or None) √max(1, A/B),
    ``"match_rms_adamw"`` 0.2·√max(A, B)."""
    A, B = shape
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, A / B))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(A, B))
    else:  # pragma: no cover - rejected at construction
        ratio = 1.0
    return lr * ratio


def to_scalar(lr: Any) -> float:
    return float(lr) if isinstance(lr, Tensor) else lr


# --------------------------------------------------------------------------- base class


class MatrixOptimizer(Optimizer):
    """Base of the matrix optimizers: validation, gradient checks, momentum, decay.

    Subclasses set :attr:`_name`, implement :meth:`_check_group` (hyperparameters,
    also called for groups added later) and :meth:`_step_groups`.
    """

    _name = "MatrixOptimizer"

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)

    # -- construction ------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # groups added later join the tile schedule where the first group is
        if self.param_groups and "step_count" in self.param_groups[0] and "step_count" not in param_group:
            param_group["step_count"] = self.param_groups[0]["step_count"]
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        gi = len(self.param_groups) - 1
        for j, p in enumerate(group["params"]):
            name = param_name(group, gi, j)
            if p.ndim < 2:
                raise ValueError(
                    f"{self._name} only optimizes matrices (and conv kernels, flattened to (out, in·k·k)); "
                    f"parameter {name} has shape {tuple(p.shape)}. Give vectors and scalars "
                    "(biases, norms' gains) to a standard optimizer such as torch.optim.AdamW."
                )
            if torch.is_complex(p):
                raise ValueError(f"{self._name} does not support complex parameters ({name})")
            if not p.dtype.is_floating_point:
                raise ValueError(f"{self._name} needs floating-point parameters; {name} is {p.dtype}")

    def _check_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- step ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with grad enabled).

        Returns
        -------
        The closure's loss, or None.

        Raises
        ------
        RuntimeError
            Sparse or complex gradients.
        ValueError
            A NaN or Inf gradient (the message names the parameter); nothing
            is updated — neither parameters nor optimizer state — in that step.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work, stats = self._collect()
        self._step_groups(work, stats)
        return loss

    def _pre_sync_stats(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> list[Tensor] | None:
        """0-d device tensors a subclass needs on the host, fetched with the finiteness flags
        (one host synchronisation per step and device for both).  Must not change any state."""
        return None

    def _collect(self) -> tuple[list[tuple[dict, list[Tensor], list[Tensor]]], list[list[float] | None]]:
        """``(group, params, grads)`` per group and the host values of :meth:`_pre_sync_stats`;
        gradients are checked before any state changes."""
        work, to_check = [], []
        for gi, group in enumerate(self.param_groups):
            params, grads = [], []
            for j, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError(
                        f"{self._name} does not support sparse gradients ({param_name(group, gi, j)})"
                    )
                if torch.is_complex(g):
                    raise RuntimeError(
                        f"{self._name} does not support complex gradients ({param_name(group, gi, j)})"
                    )
                if g.shape != p.shape:
                    raise RuntimeError(
                        f"gradient of {param_name(group, gi, j)} has shape {tuple(g.shape)}, "
                        f"parameter has {tuple(p.shape)}"
                    )
                params.append(p)
                grads.append(g)
                if group.get("check_finite", True):
                    to_check.append((gi, j, g))
            work.append((group, params, grads))
        stats = [self._pre_sync_stats(group, params, grads) if params else None for group, params, grads in work]
        flat = [t for s in stats if s is not None for t in s]
        values = check_finite_grads(to_check, self.param_groups, self._name, flat)
        out, k = [], 0
        for s in stats:
            if s is None:
                out.append(None)
            else:
                out.append(values[k : k + len(s)])
                k += len(s)
        return work, out

    def _step_groups(self, work, stats) -> None:  # pragma: no cover
        raise NotImplementedError

    def _momentum(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """torch.optim.Muon's momentum, op for op; returns the updates to orthogonalise.

        ``B ← B.lerp(g, 1 − μ)`` (= μB + (1 − μ)g), then the Nesterov update
        ``g.lerp(B, μ)`` or ``B``.  This EMA form is ``(1 − μ)`` times the
        heavy-ball sum ``B ← μB + g`` of the Muon post; the normalised maps are
        scale invariant, so the orthogonalised update is the same.
        """
        momentum, nesterov = group["momentum"], group["nesterov"]
        updates = []
        for p, g in zip(params, grads):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(g, 1 - momentum)
            updates.append(g.lerp(buf, momentum) if nesterov else buf)
        return updates

    @staticmethod
    def _apply(p: Tensor, update: Tensor, lr: float, adjusted_lr: float, weight_decay: float) -> None:
        """Decoupled weight decay ``p ← p(1 − lr·wd)`` then ``p ← p − adjusted_lr · update``."""
        p.mul_(1 - lr * weight_decay)
        p.add_(update.reshape(p.shape), alpha=-adjusted_lr)


def param_name(group: dict, gi: int, j: int) -> str:
    names = group.get("param_names")
    if names:
        return repr(names[j])
    return f"param_groups[{gi}][{j}]"


def check_finite_grads(
    items: list[tuple[int, int, Tensor]], groups: list[dict], opt_name: str, extras: list[Tensor] = ()
) -> list[float]:
    """Raise on the first NaN/Inf gradient; return the host values of ``extras`` (0-d tensors).

    Flags and extras travel together: one host synchronisation per device.
    """
    scalars = [torch.isfinite(g).all().to(torch.float64) for _, _, g in items]
    scalars += [t.detach().reshape(()).to(torch.float64) for t in extras]
    if not scalars:
        return []
    by_device: dict[torch.device, list[int]] = {}
    for k, t in enumerate(scalars):
        by_device.setdefault(t.device, []).append(k)
    values = [0.0] * len(scalars)
    for ks in by_device.values():
        for k, v in zip(ks, torch.stack([scalars[k] for k in ks]).cpu().tolist()):
            values[k] = v
    for k, ok in enumerate(values[: len(items)]):
        if not ok:
            gi, j, _ = items[k]
            raise ValueError(
                f"{opt_name}: the gradient of parameter {param_name(groups[gi], gi, j)} contains NaN or Inf; "
                "no parameter or optimizer state was updated in this step "
                "(check the loss, or use gradient clipping / a loss scaler that skips such steps)"
            )
    return values[len(items) :]
