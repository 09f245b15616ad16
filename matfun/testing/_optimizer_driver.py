"""How the optimizer battery drives the optimizer under test: build, set gradients, step, observe.

Everything the battery judges comes through :class:`Driver`: the parameters'
values, the ``state_dict()``, and the exceptions.  Values cross as float64 numpy
arrays (exact for float32 and bfloat16), so the verdicts never hold a reference
into the optimizer's own tensors.  Every call of user code — the factory,
``step()``, ``state_dict()``, ``load_state_dict()`` — is guarded: an exception
(``SystemExit`` included, ``KeyboardInterrupt`` excepted) becomes a one-line
message for the check that made the call.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._isolation import TargetError, describe_exception

__all__ = ["Driver", "Observed", "Run"]


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy().copy()


def _scalar(v: Any) -> Any:
    """A param-group value as a plain number (tensors of one element included), else as is."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.item())
    return v


@dataclass
class Observed:
    """What one optimizer exposes after a call: parameters, gradients, state, groups."""

    params: list[np.ndarray]
    grads: list[np.ndarray | None]
    #: ``state[i][key]``: the float64 value of each tensor in the state of parameter ``i``
    state: list[dict[str, np.ndarray]]
    #: ``groups[i]``: the scalar hyperparameters of the group holding parameter ``i``
    groups: list[dict[str, Any]]


@dataclass
class Run:
    """One optimizer over fresh parameters, built by the factory under test."""

    params: list[torch.nn.Parameter]
    optimizer: Any
    errors: list[str] = field(default_factory=list)


class Driver:
    """Builds optimizers with ``factory`` and drives them (in this process).

    Parameters
    ----------
    factory : callable
        ``factory(params) -> torch.optim.Optimizer`` for a list of
        ``torch.nn.Parameter``.
    name : str
        The factory's name for messages.
    """

    def __init__(self, factory: Callable[[list[torch.nn.Parameter]], Any], name: str):
        self.factory, self.name = factory, name

    def build(self, values: Sequence[np.ndarray], dtype: torch.dtype) -> Run | str:
        """A :class:`Run` over parameters holding ``values``, or why the factory refused them."""
        params = [torch.nn.Parameter(torch.as_tensor(v, dtype=torch.float64).to(dtype)) for v in values]
        try:
            opt = self.factory(list(params))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - the factory's own refusal (or crash) is reported
            return describe_exception(exc).replace("fn raised", "the factory raised", 1)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TargetError(f"{self.name} returned a {type(opt).__name__}, not a torch.optim.Optimizer")
        return Run(params, opt)

    def step(self, run: Run, grads: Sequence[np.ndarray | None]) -> str | None:
        """Set the gradients (``None``: no gradient) and call ``step()``; the error message, if any."""
        for p, g in zip(run.params, grads):
            p.grad = None if g is None else torch.as_tensor(g, dtype=torch.float64).to(p.dtype)
        try:
            run.optimizer.step()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            return describe_exception(exc).replace("fn raised", "step() raised", 1)
        return None

    def observe(self, run: Run) -> Observed:
        """Parameters, gradients and the ``state_dict()`` of ``run``, as float64 copies."""
        params = [_f64(p) for p in run.params]
        grads = [None if p.grad is None else _f64(p.grad) for p in run.params]
        state: list[dict[str, np.ndarray]] = [{} for _ in run.params]
        groups: list[dict[str, Any]] = [{} for _ in run.params]
        index = {id(p): i for i, p in enumerate(run.params)}
        try:
            sd = run.optimizer.state_dict()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            run.errors.append(describe_exception(exc).replace("fn raised", "state_dict() raised", 1))
            return Observed(params, grads, state, groups)
        order = [p for g in run.optimizer.param_groups for p in g["params"]]
        for group, sd_group in zip(run.optimizer.param_groups, sd.get("param_groups", [])):
            scalars = {k: _scalar(v) for k, v in group.items() if k != "params"}
            for pid in sd_group.get("params", []):
                if isinstance(pid, int) and pid < len(order) and id(order[pid]) in index:
                    groups[index[id(order[pid])]] = scalars
        for pid, entry in sd.get("state", {}).items():
            if not (isinstance(pid, int) and pid < len(order) and id(order[pid]) in index and isinstance(entry, dict)):
                continue
            i = index[id(order[pid])]
            for key, value in entry.items():
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 1:
                    state[i][str(key)] = _f64(value)
        return Observed(params, grads, state, groups)

    def checkpoint(self, run: Run) -> Any:
        """A deep copy of ``run``'s ``state_dict()`` (or the error message as a str)."""
        try:
            return copy.deepcopy(run.optimizer.state_dict())
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            return describe_exception(exc).replace("fn raised", "state_dict() raised", 1)

    def restore(self, run: Run, checkpoint: Any) -> str | None:
        """``load_state_dict(checkpoint)``; the error message, if any."""
        try:
            run.optimizer.load_state_dict(copy.deepcopy(checkpoint))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            return describe_exception(exc).replace("fn raised", "load_state_dict() raised", 1)
        return None

    def tensor_lr(self, run: Run) -> str | None:
        """Replace every group's float ``lr`` by a float64 0-d tensor of the same value."""
        for group in run.optimizer.param_groups:
            lr = group.get("lr")
            if not isinstance(lr, (int, float)) or isinstance(lr, bool):
                return f"the group's lr is a {type(lr).__name__}, not a float"
            group["lr"] = torch.tensor(float(lr), dtype=torch.float64)
        return None
