"""Helpers shared by the :mod:`matfun.optim` optimizers.

Hyperparameter validation, the learning-rate shape rules, the dtype in which
optimizer statistics accumulate, parameter naming in error messages, and the
single host synchronisation that fetches scalars from the device.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._backend import PRECISIONS
from ..schedules import Schedule, check_steps, get_schedule

#: torch.optim.Muon's Newton–Schulz coefficients (Keller Jordan's quintic).
JORDAN = (3.4445, -4.7750, 2.0315)

ADJUST_LR_FNS = ("original", "match_rms_adamw", "spectral_norm")

#: Group keys that belong to other optimizers (torch's and the other matfun classes).  A group
#: (or a loaded state dict) carrying one the optimizer does not use was meant for another class.
FOREIGN_KEYS = frozenset(
    {
        "betas", "amsgrad", "maximize", "foreach", "fused", "capturable", "differentiable", "dampening",
        "lr_decay", "initial_accumulator_value", "rho", "alpha", "centered", "lambd", "t0", "etas",
        "step_sizes", "momentum_decay", "decoupled_weight_decay", "max_iter", "history_size",
        "eps", "beta2", "factorized", "tile", "small_matrix", "memory_budget", "step_count",
    }
)  # fmt: skip


# --------------------------------------------------------------------------- validation


def _is_real(value: Any) -> bool:
    """A real number, bools excluded.

    (A plain ``bool`` result on purpose: narrowing ``value`` to ``numbers.Real`` would
    leave the checks below without ``>=``, which typeshed does not declare on it.)
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_lr(lr: Any) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        lr = float(lr.detach())
    if not _is_real(lr) or not lr >= 0.0 or not math.isfinite(lr):
        raise ValueError(f"Learning rate should be a finite number >= 0 but is: {lr!r}")


def check_nonneg(name: str, value: Any) -> None:
    if not _is_real(value) or not value >= 0.0 or not math.isfinite(value):
        raise ValueError(f"{name} should be a finite number >= 0 but is: {value!r}")


def check_unit_interval(name: str, value: Any) -> None:
    """``value`` in ``[0, 1)`` (a momentum or EMA factor)."""
    if not _is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} should be in [0, 1) but is: {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool (True or False), got {value!r}")


def check_foreign_keys(group: dict[str, Any], defaults: dict[str, Any], opt_name: str) -> None:
    """Reject hyperparameters of other optimizers (they would be silently ignored)."""
    foreign = sorted(k for k in group if k in FOREIGN_KEYS and k not in defaults)
    if foreign:
        raise ValueError(
            f"{opt_name} has no hyperparameter {', '.join(map(repr, foreign))} (another optimizer's); "
            f"its hyperparameters are {sorted(defaults)}"
        )


def check_adjust_lr_fn(fn: Any, allowed: tuple = (None, *ADJUST_LR_FNS)) -> None:
    if fn not in allowed:
        raise ValueError(f"Adjust learning rate function {fn!r} is not supported; choose one of {allowed}")


def check_precision(precision: Any) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS} or None")


#: resolved schedules of hashable specifications (names, tuples of Python floats/ints), so that
#: the per-step validation and job keys do not rebuild (and re-validate) a Schedule each time
_RESOLVED: dict[Any, Schedule] = {}


def _exact_key(coefficients: Any) -> Any:
    """A cache key that tells apart everything :func:`resolve_coefficients` tells apart
    (``True`` from ``1``, ``1`` from ``1.0`` kept as they are), or ``None`` when not cacheable."""
    if isinstance(coefficients, Schedule):
        return None  # get_schedule returns it as it is: nothing to save
    if type(coefficients) is str:
        return ("name", coefficients)
    if type(coefficients) is tuple and len(coefficients) <= 16:
        key: list[Any] = []
        for entry in coefficients:
            if type(entry) in (float, int):
                key.append((type(entry), entry))
            elif type(entry) is tuple and all(type(v) in (float, int) for v in entry):
                key.append(tuple((type(v), v) for v in entry))
            else:
                return None
        return ("tuple", tuple(key))
    return None


def resolve_coefficients(coefficients: Any) -> Schedule:
    """A schedule from a name, a :class:`Schedule`, tuples ``(a, b, c)``, or one flat
    ``(a, b, c)`` triple as torch.optim.Muon takes it."""
    key = _exact_key(coefficients)
    if key is None:
        return _resolve_coefficients(coefficients)
    schedule = _RESOLVED.get(key)
    if schedule is None:
        schedule = _resolve_coefficients(coefficients)  # raises for invalid ones: nothing is cached
        if len(_RESOLVED) < 256:
            _RESOLVED[key] = schedule
    return schedule


def _resolve_coefficients(coefficients: Any) -> Schedule:
    if (
        isinstance(coefficients, (tuple, list))
        and len(coefficients) == 3
        and all(isinstance(v, numbers.Real) for v in coefficients)
    ):
        coefficients = (tuple(float(v) for v in coefficients),)
    return get_schedule(coefficients)


#: The largest singular value a Newton–Schulz iterate may reach (the map's input has σ ≤ 1):
#: its fifth power, the largest entry of a product in the map, stays far inside the float32 and
#: bfloat16 range (3.4e38).  Published schedules stay below 2.
MAX_ITERATE = 1e7


@functools.lru_cache(maxsize=64)
def _iterate_peak(schedule: Schedule, steps: int) -> float:
    """``max |p_k(σ)|`` over the iterates ``k ≤ steps`` and ``σ`` in ``[0, 1/normalization]``
    (Newton–Schulz acts on each singular value through the scalar polynomials)."""
    x = np.linspace(0.0, 1.0 / schedule.normalization, 4097)
    peak = float(x[-1])
    with np.errstate(all="ignore"):
        for k in range(steps):
            a, b, c = schedule.coefficients[min(k, len(schedule.coefficients) - 1)]
            x = a * x + b * x**3 + c * x**5
            peak = max(peak, float(np.abs(x).max()))
            if not peak <= MAX_ITERATE:
                return math.inf if math.isnan(peak) else peak
    return peak


def check_ns_schedule(coefficients: Any, steps: Any) -> None:
    """A schedule and step count whose iterates cannot overflow (else the update is Inf/NaN)."""
    schedule = resolve_coefficients(coefficients)
    steps = check_ns_steps(steps)
    peak = _iterate_peak(schedule, steps)
    if not peak <= MAX_ITERATE:
        raise ValueError(
            f"ns_coefficients {schedule.name!r} with ns_steps={steps} grow singular values to {peak:.3g} "
            f"(more than {MAX_ITERATE:g}): the Newton–Schulz products would overflow to Inf/NaN"
        )


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
    """The learning rate scaled for an ``A × B`` (fan_out × fan_in) matrix.

    * ``"original"`` (or None), torch.optim.Muon's default: ``lr·√max(1, A/B)``;
    * ``"match_rms_adamw"`` (Liu et al. 2025, HiMuon's default): ``lr·0.2·√max(A, B)``;
    * ``"spectral_norm"`` (dion's Muon/Muon²; Yang et al. 2023): ``lr·√(A/B)``.
    """
    A, B = shape
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, A / B))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(A, B))
    elif adjust_lr_fn == "spectral_norm":
        ratio = math.sqrt(A / B)
    else:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn!r} is not supported")
    return lr * ratio


def to_scalar(lr: Any) -> float:
    return float(lr.detach()) if isinstance(lr, Tensor) else lr


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Optimizer statistics accumulate in float32 or wider whatever the parameter dtype:
    float16/bfloat16 parameters get float32 momenta and second moments (a float16 ``G ⊙ G``
    overflows for entries above 256)."""
    return torch.promote_types(dtype, torch.float32)


def param_name(group: dict, gi: int, j: int) -> str:
    """A parameter's name for error messages: its name when the group has ``param_names``."""
    names = group.get("param_names")
    if names:
        return repr(names[j])
    return f"param_groups[{gi}][{j}]"


def _zero_d(t: Tensor) -> Tensor:
    return t if t.ndim == 0 else t.reshape(())


def host_values(scalars: list[Tensor]) -> list[float]:
    """The values of 0-d tensors as Python floats: one host synchronisation per device."""
    values = [0.0] * len(scalars)
    by_device: dict[torch.device, list[int]] = {}
    for k, t in enumerate(scalars):
        by_device.setdefault(t.device, []).append(k)
    for ks in by_device.values():
        if len({scalars[k].dtype for k in ks}) == 1:  # one dtype: stack, then widen once (exact)
            stacked = torch.stack([_zero_d(scalars[k]) for k in ks]).detach().to(torch.float64)
        else:
            stacked = torch.stack([_zero_d(scalars[k]).detach().to(torch.float64) for k in ks])
        for k, v in zip(ks, stacked.cpu().tolist()):
            values[k] = v
    return values
