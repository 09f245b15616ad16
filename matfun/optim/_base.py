"""The base class of the matrix optimizers: an all-or-nothing step in two phases.

``step`` first *plans*: it validates every group (hyperparameters, the tile in
force) and every gradient, computes each parameter's new statistics and its
orthogonalised update into temporaries, and checks gradients and statistics
for NaN/Inf in one host synchronisation.  Only then does it *commit*: state,
weights and step counts are written, by operations that cannot fail.  Any
error leaves the optimizer and the parameters bit-identical to before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..schedules import Schedule
from ..sharding import Communication
from ._checkpoint import loaded_state
from ._common import (
    adjust_lr,
    as_matrix,
    check_bool,
    check_foreign_keys,
    host_values,
    matrix_shape,
    param_name,
    statistics_dtype,
    to_scalar,
)
from ._sharded import check_placement, is_sharded, local, reduce_flags


def _typed(value: Any) -> Any:
    """``value`` as a hashable key that keeps types apart (``True``/``1``/``1.0``), or raise
    ``TypeError`` for a value compared only by identity or not at all (tensors, lists, objects)."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return (kind, value)
    if kind is tuple:
        return (tuple, tuple(_typed(v) for v in value))
    if kind is Schedule:
        return (Schedule, value)
    raise TypeError(kind.__name__)


def _group_key(group: dict[str, Any]) -> Any:
    """The hyperparameters of ``group`` as a comparable key (see :meth:`MatrixOptimizer._check_group_once`),
    or ``None`` when they cannot be compared exactly."""
    count = group.get("step_count")
    if "step_count" in group and not (type(count) is int and count >= 0):
        return None
    skip = ("params", "param_names", "step_count")
    try:
        items = tuple((k, _typed(v)) for k, v in group.items() if k not in skip)
    except TypeError:
        return None
    return (items, "step_count" in group)


@dataclass
class ParamStep:
    """What one step does to one parameter, computed before anything is written."""

    param: Tensor
    group: dict[str, Any]
    name: str
    grad: Tensor
    #: the parameter's statistics after this step (keys of ``optimizer.state[param]``)
    new_state: dict[str, Tensor] = field(default_factory=dict)
    #: statistics the commit writes in place into ``new_state[key]`` (no copy is held through the
    #: step): ``fn(True)`` performs the update in place, ``fn(False)`` returns the same values out
    #: of place (the same operations, so bit for bit the same)
    in_place: dict[str, Callable[[bool], Tensor]] = field(default_factory=dict)
    #: the ``(H, W)`` matrix to orthogonalise, and its orthogonalised form
    direction: Tensor | None = None
    update: Tensor | None = None
    #: the tile it runs with (None: one full Newton–Schulz) and the shape the lr rule sees
    tile: tuple[int, int] | None = None
    lr_shape: tuple[int, int] = (0, 0)
    #: subclass data (Muon²: the new second-moment statistics)
    extra: Any = None
    #: ``‖direction‖_F`` once computed (a finiteness probe, and the ``eps`` floor's norm)
    direction_norm: Tensor | None = None
    #: the commit's scalars: ``θ ← decay·θ − step_size·update`` (checked finite in the plan)
    decay: float = 1.0
    step_size: float = 0.0

    @staticmethod
    def take_directions(items: list[ParamStep]) -> list[Tensor]:
        """The items' directions, which the returned list then holds alone: a map that sets an
        entry to None once its output exists frees the direction (the step keeps one matrix per
        parameter, not two)."""
        mats = [item.matrix for item in items]
        for item in items:
            item.direction = None
        return mats

    @property
    def matrix(self) -> Tensor:
        """``direction``, which the step's first phase (the momentum update) sets before any map runs."""
        assert self.direction is not None, "direction read before the momentum update set it"
        return self.direction


class MatrixOptimizer(Optimizer):
    """Base of the matrix optimizers: validation, the two-phase step, checkpoint checks.

    Subclasses set :attr:`_name` and :attr:`_state_keys`, and implement
    :meth:`_check_group` (hyperparameters) and :meth:`_orthogonalize`; they may
    extend :meth:`_group_context`, :meth:`_prepare` and :meth:`_sync_extras`.
    """

    _name = "MatrixOptimizer"
    #: every state key the class writes (a loaded state with another key is rejected)
    _state_keys: tuple[str, ...] = ("momentum_buffer",)
    #: hyperparameters a loaded param group may lack: they take this optimizer's constructor values
    _filled_from_defaults: tuple[str, ...] = ()

    # -- construction ------------------------------------------------------------------

    @property
    def _maps(self) -> dict:
        """Map objects reused across steps, keyed by their configuration (built on first use)."""
        maps = self.__dict__.get("_map_cache")
        if maps is None:
            maps = self.__dict__["_map_cache"] = {}
        return maps

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; a group that fails validation is not added.

        Raises
        ------
        ValueError
            Invalid hyperparameters, another optimizer's hyperparameters, or a
            parameter that is not a real floating matrix (vectors and scalars
            belong to AdamW; see :func:`matfun.optim.split_params`).
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        param_group = dict(param_group)  # the caller's dict stays as it was
        # groups added later join the tile schedule where the first group is
        if self.param_groups and "step_count" in self.param_groups[0] and "step_count" not in param_group:
            param_group["step_count"] = self.param_groups[0]["step_count"]
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
            self._check_params(group, len(self.param_groups) - 1)
        except Exception:
            self.param_groups.pop()
            raise

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate a group's hyperparameters (subclasses extend)."""
        check_foreign_keys(group, self.defaults, self._name)
        check_bool("check_finite", group["check_finite"])

    def _check_group_once(self, group: dict[str, Any], gi: int) -> None:
        """:meth:`_check_group`, skipped when the group's hyperparameters are exactly (types
        included) those that passed it last step; groups with values that cannot be compared so
        (tensors, lists, other objects) are checked every step.  ``step_count`` is left out of
        the comparison while it is an integer ``>= 0`` (it changes every step)."""
        key = _group_key(group)
        validated = self.__dict__.setdefault("_validated_groups", {})
        if key is not None and validated.get(gi) == key:
            return
        validated.pop(gi, None)
        self._check_group(group)
        if key is not None:
            validated[gi] = key

    def _check_params(self, group: dict[str, Any], gi: int) -> None:
        seen: set[int] = set()
        for j, p in enumerate(group["params"]):
            name = param_name(group, gi, j)
            if id(p) in seen:  # torch only warns; the parameter would take two steps per step
                raise ValueError(f"{self._name}: parameter {name} appears twice in param group {gi}")
            seen.add(id(p))
            if p.ndim < 2:
                raise ValueError(
                    f"{self._name} only optimizes matrices (and conv kernels, flattened to (out, in·k·k)); "
                    f"parameter {name} has shape {tuple(p.shape)}. Give vectors and scalars "
                    "(biases, norms' gains) to a standard optimizer such as torch.optim.AdamW "
                    "(matfun.optim.split_params(model) makes the split)."
                )
            if torch.is_complex(p):
                raise ValueError(f"{self._name} does not support complex parameters ({name})")
            if not p.dtype.is_floating_point:
                raise ValueError(f"{self._name} needs floating-point parameters; {name} is {p.dtype}")
            check_placement(p, name, self._name)

    # -- checkpoints ---------------------------------------------------------------------

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by the same optimizer class, or raise and change nothing.

        Statistics are kept in float32 or wider (torch's loader would cast them to
        the parameter dtype).

        Raises
        ------
        ValueError
            The state dict was saved by another optimizer class (missing or
            foreign hyperparameters, foreign state keys), has another number of
            param groups or parameters, state of the wrong shape, or invalid or
            non-finite values.  The message says what does not match.
        """
        if not isinstance(state_dict, dict):
            raise ValueError(f"{self._name}.load_state_dict needs a dict, got {type(state_dict).__name__}")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        groups, state = loaded_state(self, state_dict)
        self.__setstate__({"state": state, "param_groups": groups})
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _check_state(self, name: str, p: Tensor, group: dict[str, Any], state: dict[str, Tensor]) -> None:
        """Class-specific checks of one loaded parameter state (after shapes and finiteness)."""

    def _state_shapes(self, p: Tensor) -> dict[str, tuple[int, ...]]:
        """The shape of every state key for parameter ``p``."""
        return {"momentum_buffer": tuple(p.shape)}

    # -- step ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step, all or nothing.

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
            Sparse or complex gradients, or a gradient of the wrong shape.
        ValueError
            Invalid hyperparameters or tile in any group, a NaN or Inf gradient,
            or a statistic (momentum, second moment) that would become NaN or
            Inf; the message names the parameter.  Whatever the error (also one
            raised by a tile callable), nothing is changed: parameters, state
            and step counts are bit-identical to before the call.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._commit(self._plan())
        return loss

    def _plan(self) -> list[ParamStep]:
        """Validate everything and compute every update; writes nothing."""
        self._communication = Communication()
        items = []
        for gi, group in enumerate(self.param_groups):
            try:
                self._check_group_once(group, gi)
                context = self._group_context(group)
            except (ValueError, TypeError) as error:
                message = f"{self._name}: param group {gi}: {error}; nothing was updated in this step"
                raise type(error)(message) from error
            except Exception as error:  # e.g. raised by a tile callable: keep its type
                if hasattr(error, "add_note"):  # Python >= 3.11
                    error.add_note(f"{self._name}: in param group {gi}; nothing was updated in this step")
                raise
            for j, p in enumerate(group["params"]):
                if p.grad is not None and p.numel() > 0:  # an empty matrix has nothing to update
                    item = ParamStep(p, group, param_name(group, gi, j), self._checked_grad(p, group, gi, j))
                    self._prepare(item, context)
                    self._step_scalars(item, gi)
                    items.append(item)
        extras = self._check_finite(items)
        self._orthogonalize(items, extras)
        return items

    def _commit(self, items: list[ParamStep]) -> None:
        """Write state, weights and step counts (nothing here can fail).

        Every statistic is written before any weight, so a gradient that aliases another
        parameter is read as it was when the plan computed the update."""
        self.last_step_communication = self._communication
        for item in items:
            for update in item.in_place.values():
                update(True)
            self.state[item.param] = item.new_state  # the whole state: keys of another configuration do not linger
        for item in items:
            p = item.param
            p.mul_(item.decay)  # decoupled weight decay
            assert item.update is not None  # the plan computed every update before the commit
            p.add_(item.update.reshape(p.shape), alpha=-item.step_size)
        for group in self.param_groups:
            if "step_count" in group:
                group["step_count"] += 1

    def _step_scalars(self, item: ParamStep, gi: int) -> None:
        """The decay factor ``1 − lr·λ`` and the step size ``AdjustLR(lr, shape)``, which must be
        finite in the parameter's dtype (else the commit would fail half-way or write Inf)."""
        group = item.group
        lr = to_scalar(group["lr"])
        item.decay = 1 - lr * group["weight_decay"]
        item.step_size = adjust_lr(lr, group["adjust_lr_fn"], item.lr_shape)
        limit = torch.finfo(item.param.dtype).max
        for what, value in (("1 - lr·weight_decay", item.decay), ("the step size lr·AdjustLR", item.step_size)):
            if not abs(value) <= limit:
                raise ValueError(
                    f"{self._name}: param group {gi}: {what} = {value:g} for parameter {item.name} is not "
                    f"finite in {item.param.dtype} (lr={lr!r}, weight_decay={group['weight_decay']!r}); "
                    "nothing was updated in this step"
                )

    def _checked_grad(self, p: Tensor, group: dict, gi: int, j: int) -> Tensor:
        g = p.grad
        assert g is not None  # called for parameters with a gradient only
        if g.is_sparse:
            raise RuntimeError(f"{self._name} does not support sparse gradients ({param_name(group, gi, j)})")
        if torch.is_complex(g):
            raise RuntimeError(f"{self._name} does not support complex gradients ({param_name(group, gi, j)})")
        if g.shape != p.shape:
            raise RuntimeError(
                f"gradient of {param_name(group, gi, j)} has shape {tuple(g.shape)}, parameter has {tuple(p.shape)}"
            )
        return g

    def _group_context(self, group: dict[str, Any]) -> Any:
        """Per-group data for :meth:`_prepare` (HiMuon: the tile in force); may raise."""
        return None

    def _prepare(self, item: ParamStep, context: Any) -> None:
        """torch.optim.Muon's momentum, op for op, in float32 or wider.

        ``B ← B.lerp(g, 1 − μ)`` (= μB + (1 − μ)g), then the direction
        ``g.lerp(B, μ)`` (Nesterov) or ``B``.  This EMA form is ``(1 − μ)`` times
        the heavy-ball sum ``B ← μB + g`` of the Muon post; the normalised maps
        are scale invariant, so the orthogonalised update is the same.

        With Nesterov the new ``B`` is a temporary here (only the direction is kept
        through the step) and the commit repeats ``B.lerp_(g, 1 − μ)`` in place: the
        step holds one matrix per parameter instead of two, and allocates no new buffer.
        """
        group, state = item.group, self.state[item.param]
        dtype = statistics_dtype(item.param.dtype)
        g = item.grad if item.grad.dtype == dtype else item.grad.to(dtype)
        weight = 1 - group["momentum"]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = torch.zeros_like(g, memory_format=torch.preserve_format)
        elif buf.dtype != dtype:
            buf = buf.to(dtype)
        new = buf.lerp(g, weight)
        if group["nesterov"]:
            item.direction = as_matrix(g.lerp(new, group["momentum"]))
            item.new_state["momentum_buffer"] = buf
            item.in_place["momentum_buffer"] = lambda write: buf.lerp_(g, weight) if write else buf.lerp(g, weight)
        else:  # the new momentum is the direction: it becomes the new state
            item.direction = as_matrix(new)
            item.new_state["momentum_buffer"] = new
        item.lr_shape = matrix_shape(item.param)

    def _sync_extras(self, items: list[ParamStep]) -> list[Tensor]:
        """0-d device tensors the subclass needs on the host, fetched with the finiteness flags."""
        return []

    def _finite_probes(self, item: ParamStep) -> list[Tensor]:
        """0-d tensors that are finite whenever the gradient and the new statistics of ``item`` are.

        ``‖U‖_F`` of the direction ``U = g.lerp(B', μ)`` (or ``B'``) covers the gradient and
        the new momentum ``B' = B.lerp(g, 1 − μ)``: with ``B`` finite (every committed or loaded
        state is) and ``1 − μ > 0``, a NaN/Inf in ``g`` or ``B'`` reaches ``U``.  Every other new
        statistic adds the sum of its entries.  A probe may also be non-finite for finite
        inputs (a norm or sum that overflows): :meth:`_check_finite` then checks exactly.
        """
        (norm,) = self._direction_norms([item])
        return [norm] + [v.sum() for k, v in item.new_state.items() if k != "momentum_buffer"]

    @staticmethod
    def _direction_norms(items: list[ParamStep]) -> list[Tensor]:
        """``‖U‖_F`` of each item's direction, computed once per step (those not yet known in one
        ``_foreach_norm`` call) and kept on the item."""
        unknown = [item for item in items if item.direction_norm is None]
        if unknown:
            for item, norm in zip(unknown, torch._foreach_norm([item.matrix for item in unknown])):
                item.direction_norm = norm
        return [item.direction_norm for item in items]  # type: ignore[misc]

    def _check_finite(self, items: list[ParamStep]) -> list[float]:
        """Raise on the first NaN/Inf gradient or statistic; return the host values of
        :meth:`_sync_extras`.  Flags and extras travel together: one synchronisation per device.

        Unsharded steps fetch a few 0-d probes per parameter (:meth:`_finite_probes`) with the
        extras; only when a probe is not finite are the tensors checked entry by entry (which
        raises naming the parameter, or finds that the probe merely overflowed).
        """
        if not any(is_sharded(item.param) for item in items):
            self._direction_norms([item for item in items if item.group["check_finite"]])
            probes = [t for item in items if item.group["check_finite"] for t in self._finite_probes(item)]
            extras = self._sync_extras(items)
            values = host_values(probes + list(extras))
            if all(math.isfinite(v) for v in values[: len(probes)]):
                return values[len(probes) :]
            self._check_finite_exactly(items)
            return values[len(probes) :]
        return self._check_finite_exactly(items)

    def _check_finite_exactly(self, items: list[ParamStep]) -> list[float]:
        """:meth:`_check_finite` entry by entry (one ``isfinite`` flag per tensor).

        A statistic the commit writes in place (the Nesterov momentum ``B'``) is covered by the
        direction ``U = g.lerp(B', μ)``: with ``g`` finite, ``U`` is finite only if ``B'`` is.  Only
        when ``U`` is not is ``B'`` recomputed, to tell its overflow from ``U``'s own.
        """
        checks: list[tuple[ParamStep, str | None, Tensor]] = []
        for item in items:
            if item.group["check_finite"]:
                checks.append((item, None, item.grad))
                checks.extend((item, k, v) for k, v in item.new_state.items() if k not in item.in_place)
                checks.append((item, "", item.matrix))
        extras = self._sync_extras(items)
        values = self._finite_flags([t for _, _, t in checks], items, extras)
        for (item, key, _), ok in zip(checks, values):
            if ok:
                continue
            if key == "":  # the gradient is finite: a statistic written in place, or U itself, overflowed
                deferred = list(item.in_place)
                flags = self._finite_flags([item.in_place[k](False) for k in deferred], items, [])
                key = next((k for k, finite in zip(deferred, flags) if not finite), "")
            if key is None:
                what = f"the gradient of parameter {item.name} contains NaN or Inf"
                hint = "check the loss, or use gradient clipping / a loss scaler that skips such steps"
            elif not key:
                what = f"the update direction of parameter {item.name} overflows"
                hint = "its gradient and momentum are near the largest float: scale the loss or clip gradients"
            else:
                what = f"the statistic {key!r} of parameter {item.name} would become NaN or Inf"
                dtype = statistics_dtype(item.param.dtype)
                hint = f"its {dtype} accumulator overflows: scale the loss or clip gradients"
            raise ValueError(f"{self._name}: {what}; no parameter or optimizer state was updated in this step ({hint})")
        return values[len(checks) :]

    @staticmethod
    def _finite_flags(tensors: list[Tensor], items: list[ParamStep], extras: list[Tensor]) -> list[float]:
        """Host values of one ``isfinite(t).all()`` flag per tensor (reduced over the ranks when a
        parameter is sharded: every rank sees every rank's flags, and raises with them), then of
        ``extras``, in one synchronisation."""
        flags = [torch.isfinite(local(t)).all() for t in tensors]
        sharded = next((item.param for item in items if is_sharded(item.param)), None)
        if sharded is not None and flags:
            flags = list(reduce_flags(torch.stack(flags), sharded))
        return host_values(flags + list(extras))

    def _orthogonalize(self, items: list[ParamStep], extras: list[float]) -> None:  # pragma: no cover
        """Set ``item.update`` for every item."""
        raise NotImplementedError
