"""Checks of a state dict before a matrix optimizer loads it.

A state dict from another optimizer class, with another number of groups or
parameters, with state of the wrong shape or with non-finite statistics is
rejected when it is loaded (not at the next ``step``), with a message that says
what does not match, and the optimizer is left unchanged.
"""

from __future__ import annotations

from copy import deepcopy
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch

from ._common import FOREIGN_KEYS, param_name, statistics_dtype

if TYPE_CHECKING:  # pragma: no cover
    from ._base import MatrixOptimizer

#: hyperparameters added after v0.1, with the value that reproduces a v0.1 checkpoint's run
LEGACY_DEFAULTS = {"small_matrix": "tile"}


def loaded_state(opt: MatrixOptimizer, state_dict: dict[str, Any]) -> tuple[list[dict], dict]:
    """``(param_groups, state)`` to install from ``state_dict``; raises ``ValueError`` on any mismatch."""
    where = f"{opt._name}.load_state_dict"
    if not {"state", "param_groups"} <= set(state_dict):
        raise ValueError(f"{where}: a state dict has keys 'state' and 'param_groups', got {sorted(state_dict)}")
    saved_groups = state_dict["param_groups"]
    if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(opt.param_groups):
        n = len(saved_groups) if isinstance(saved_groups, (list, tuple)) else type(saved_groups).__name__
        raise ValueError(f"{where}: the state dict has {n} param groups, this optimizer has {len(opt.param_groups)}")
    if not isinstance(state_dict["state"], dict):
        raise ValueError(
            f"{where}: 'state' must be a dict (parameter id -> state), got {type(state_dict['state']).__name__}"
        )
    groups = []
    for gi, (group, saved) in enumerate(zip(opt.param_groups, saved_groups)):
        groups.append(_loaded_group(opt, where, gi, group, saved))
    saved_ids = list(chain.from_iterable(s["params"] for s in saved_groups))
    if len(set(saved_ids)) != len(saved_ids):
        raise ValueError(f"{where}: the state dict lists a parameter id twice in its param groups")
    id_map = dict(
        zip(chain.from_iterable(s["params"] for s in saved_groups), chain.from_iterable(g["params"] for g in groups))
    )
    location = {id(p): (gi, j) for gi, g in enumerate(groups) for j, p in enumerate(g["params"])}
    state: dict = {}
    for key, saved_state in state_dict["state"].items():
        if key not in id_map:
            raise ValueError(f"{where}: the state dict has state for parameter id {key!r}, which no param group lists")
        p = id_map[key]
        gi, j = location[id(p)]
        state[p] = _loaded_param_state(opt, where, param_name(groups[gi], gi, j), p, groups[gi], saved_state)
    return groups, state


def _loaded_group(opt: MatrixOptimizer, where: str, gi: int, group: dict, saved: Any) -> dict:
    if not isinstance(saved, dict) or not isinstance(saved.get("params"), (list, tuple)):
        raise ValueError(f"{where}: param group {gi} of the state dict is not a dict with a 'params' list")
    if len(saved["params"]) != len(group["params"]):
        raise ValueError(
            f"{where}: param group {gi} has {len(saved['params'])} parameters in the state dict, "
            f"{len(group['params'])} in this optimizer"
        )
    fillable = {**LEGACY_DEFAULTS, **{k: opt.defaults[k] for k in opt._filled_from_defaults}}
    missing = sorted(k for k in opt.defaults if k not in saved and k not in fillable)
    foreign = sorted(k for k in saved if k in FOREIGN_KEYS and k not in opt.defaults)
    if missing or foreign:
        parts = ([f"lacks {missing}"] if missing else []) + ([f"has {foreign}"] if foreign else [])
        raise ValueError(
            f"{where}: param group {gi} of the state dict {' and '.join(parts)}: it was saved by another "
            f"optimizer class ({opt._name}'s hyperparameters are {sorted(opt.defaults)})"
        )
    new = deepcopy({k: v for k, v in saved.items() if k not in ("params", "param_names")})
    for key, value in fillable.items():
        if key in opt.defaults:
            new.setdefault(key, deepcopy(value))
    new["params"] = group["params"]
    names = saved.get("param_names", group.get("param_names"))
    if names is not None:
        if not isinstance(names, (list, tuple)) or len(names) != len(group["params"]):
            raise ValueError(
                f"{where}: param group {gi} of the state dict has 'param_names' that do not list "
                f"one name per parameter ({len(group['params'])})"
            )
        ours = group.get("param_names")
        if ours is not None and list(ours) != list(names):
            j = next(j for j, (a, b) in enumerate(zip(ours, names)) if a != b)
            raise ValueError(
                f"{where}: param group {gi}: parameter {j} is {ours[j]!r} here but {names[j]!r} in the state "
                "dict (state is loaded by position, so it would go to the wrong parameter); rename the saved "
                "'param_names' in a load_state_dict pre-hook, or delete them to load by position"
            )
        new["param_names"] = list(names)
    try:
        opt._check_group(new)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: param group {gi} of the state dict: {error}") from None
    return new


def _loaded_param_state(opt: MatrixOptimizer, where: str, name: str, p: torch.Tensor, group: dict, saved: Any) -> dict:
    if not isinstance(saved, dict):
        raise ValueError(f"{where}: the state of parameter {name} is not a dict")
    unknown = sorted(k for k in saved if k not in opt._state_keys)
    if unknown:
        raise ValueError(
            f"{where}: the state of parameter {name} has keys {unknown} that {opt._name} does not use "
            f"(it keeps {list(opt._state_keys)}): saved by another optimizer class?"
        )
    if saved and "momentum_buffer" not in saved:
        raise ValueError(f"{where}: the state of parameter {name} lacks 'momentum_buffer'")
    shapes = opt._state_shapes(p)
    dtype = statistics_dtype(p.dtype)
    out = {}
    for key, value in saved.items():
        if (
            not isinstance(value, torch.Tensor)
            or not value.dtype.is_floating_point
            or value.layout != torch.strided
            or value.is_meta
        ):
            raise ValueError(
                f"{where}: state {key!r} of parameter {name} must be a dense floating tensor with values, "
                f"got {type(value).__name__} {getattr(value, 'dtype', '')} {getattr(value, 'layout', '')}"
                f"{' on meta' if getattr(value, 'is_meta', False) else ''}"
            )
        if tuple(value.shape) != shapes[key]:
            raise ValueError(
                f"{where}: state {key!r} of parameter {name} has shape {tuple(value.shape)}, "
                f"the parameter needs {shapes[key]}"
            )
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: state {key!r} of parameter {name} contains NaN or Inf")
        # a copy: the step updates the momentum in place, and the caller's state dict stays as it was
        out[key] = value.to(device=p.device, dtype=dtype, copy=True)
    try:
        opt._check_state(name, p, group, out)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return out
