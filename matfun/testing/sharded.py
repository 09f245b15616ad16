"""Check that an optimizer gives the same result on an FSDP2-sharded model as on one process.

:func:`check_sharded_optimizer` (re-exported by :mod:`matfun.testing`) spawns
``world_size`` CPU processes joined by gloo, shards a fresh model with
:func:`torch.distributed.fsdp.fully_shard` (every parameter becomes a DTensor
``Shard(0)``), runs ``steps`` optimizer steps on the same data as an unsharded
single-process reference, and reports:

``ranks_complete``
    every rank ran every step (an exception or a hang on any rank fails this
    check with the rank's error; a hang ends at ``timeout``).
``params_match_reference``
    ``max ‖θ_sharded − θ_ref‖_F / ‖θ_ref‖_F`` over parameters, at most the
    tolerance (below); the detail names the worst parameter and gives its error
    in units of the compute precision's eps.  Running full Newton–Schulz
    separately on each rank's shard — the classic bug of distributed Muon —
    fails here.  It also fails, saying so, when ``model_fn`` gave the sharded
    run other initial weights than the reference, or when the reference changed
    no parameter (nothing would have been compared).
``replicated_state_identical``
    optimizer state that is not sharded (step counts, Muon²-F's column
    statistics, hyperparameters, DTensors placed ``Replicate``) is
    bit-identical on every rank, over the union of the keys of all ranks: a
    key missing on any rank, another shape, dtype or type fails, naming the
    rank and the key.
``ranks_agree``
    every rank saw the same, finite loss at every step.

With ``world_size=1`` the model is still a DTensor model (a one-rank mesh), so
``params_match_reference`` still tests the optimizer's DTensor code path; the
two cross-rank checks then have a single rank and say so.

The report also carries the communication measured inside ``optimizer.step``:
the payload bytes each rank handed to torch.distributed collectives (c10d and
functional collectives, counted at the dispatcher), per step.

Tolerance
---------
Sharded and unsharded runs differ only by rounding (summation order inside
matrix products and reductions), so the default tolerance is

    ``tol = TOL_FACTOR * eps(d)``,  ``TOL_FACTOR = 1000``,

where ``d`` is the less precise of the parameter's dtype and ``compute_dtype``
(the precision the optimizer computes its update in; default: the parameter's
dtype).  float64: 2.2e-13, float32: 1.2e-4.  Measured with matfun's optimizers
(3 steps, lr 0.02, 2 and 4 ranks, float64 model): the error is at most about 5
eps of the compute dtype (float64 compute: ≤ 1.2e-15; Muon²/Muon²-F computing in
float32: 3.5e-7 / 6.3e-7), so the factor leaves a margin of ~200 for longer
runs, while the per-shard Newton–Schulz bug gives 4e-2…5e-2 (about 3.5e5 eps of
float32), ~350 times the float32 tolerance.  The error is relative to the
parameter, so it scales with the learning rate: a bug's error is about
``lr × steps``, and the check discriminates only while that is far above the
tolerance.

There is no default for bfloat16/float16 (parameters or compute): their
rounding moves the parameters as much as a sharding bug does (a correct Muon²-F
computing in bfloat16: 2.3e-2; the per-shard bug: 4.2e-2), so no tolerance
separates them.  Check in float32 or float64, or pass ``tol=`` knowingly.

When a float64 check fails with an error at the level of float32 rounding
(≤ ``TOL_FACTOR * eps(float32)``), the detail says so and names the argument to
set: matfun's ``Muon``, ``HiMuon`` and ``Muon2`` compute in float32 on the CPU
unless given ``precision="float64"``.
"""

from __future__ import annotations

import math
import numbers
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._spawn import DistributedRunError, check_timeout, run_distributed
from ._report import CheckResult, Report

__all__ = ["TOL_FACTOR", "ShardedReport", "assert_sharded_optimizer", "check_sharded_optimizer", "default_tol"]

#: the default tolerance is ``TOL_FACTOR * eps`` of the compute precision (module doc)
TOL_FACTOR = 1000.0
_HALF = (torch.bfloat16, torch.float16)
_DTYPE_NAMES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bfloat16-emulated": torch.bfloat16,
    "float16": torch.float16,
}


def _as_float_dtype(value: Any) -> torch.dtype | None:
    """``compute_dtype`` as a floating torch dtype (a dtype or a matfun precision name)."""
    if value is None:
        return None
    dtype = _DTYPE_NAMES.get(value) if isinstance(value, str) else value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"compute_dtype must be a floating torch.dtype or one of {sorted(_DTYPE_NAMES)}, or None, got {value!r}"
        )
    return dtype


def _coarser(a: torch.dtype, b: torch.dtype | None) -> torch.dtype:
    """The less precise of two floating dtypes (``b=None``: ``a``)."""
    if b is None or torch.finfo(a).eps >= torch.finfo(b).eps:
        return a
    return b


def default_tol(param_dtype: torch.dtype, compute_dtype: torch.dtype | None = None) -> float:
    """``TOL_FACTOR * eps`` of the less precise of ``param_dtype`` and ``compute_dtype``.

    Parameters
    ----------
    param_dtype : torch.dtype
        A floating dtype of a parameter.
    compute_dtype : torch.dtype, optional
        The precision the optimizer computes its update in (default: ``param_dtype``).

    Returns
    -------
    float
        float64: 2.2e-13; float32: 1.2e-4 (see the module doc for the measurements).

    Raises
    ------
    ValueError
        For bfloat16/float16, whose rounding is as large as a sharding bug's
        error: there is no safe default, pass ``tol=`` to the check.
    """
    dtype = _coarser(param_dtype, compute_dtype)
    if dtype in _HALF:
        raise ValueError(
            f"no default tolerance in {str(dtype).removeprefix('torch.')}: its rounding moves the parameters as "
            "much as a sharding bug does (a correct Muon2-F computing in bfloat16: 2.3e-2; per-shard "
            "Newton-Schulz: 4.2e-2), so no tolerance tells them apart; check in float32 or float64 (model and "
            "optimizer precision), or pass tol= explicitly"
        )
    return TOL_FACTOR * torch.finfo(dtype).eps


@dataclass
class ShardedReport(Report):
    """Result of :func:`check_sharded_optimizer` (``.passed``, ``.table()``, ``[name]``).

    Attributes
    ----------
    bytes_per_step : list of list of int
        Payload bytes each rank handed to collectives in each ``optimizer.step``.
    """

    bytes_per_step: list[list[int]] = field(default_factory=list)

    def table(self) -> str:
        lines = super().table().splitlines()
        lines[0] = lines[0].replace("orthogonaliser check", "sharded optimizer check", 1)
        if self.bytes_per_step:
            per_rank = ", ".join(
                f"rank {r}: {_human(sum(b) / max(len(b), 1))}" for r, b in enumerate(self.bytes_per_step)
            )
            lines.insert(-1, f"communication in optimizer.step (mean per step): {per_rank}")
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def mean_square(output: torch.Tensor) -> torch.Tensor:
    """The default loss: the mean square of the model's output."""
    return output.float().pow(2).mean()


def _first_linear(model: nn.Module) -> nn.Linear:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return m
    raise ValueError("the model has no nn.Linear layer; pass inputs= to check_sharded_optimizer")


def _batch(model: nn.Module, inputs: Any, step: int, batch: int) -> torch.Tensor:
    if inputs is None:
        first = _first_linear(model)
        gen = torch.Generator().manual_seed(1000 + step)
        return torch.randn(batch, first.in_features, generator=gen, dtype=torch.float64).to(first.weight.dtype)
    if callable(inputs):
        return inputs(step)
    return inputs[step]


class _CommCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Payload bytes handed to c10d / functional collectives (input side)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.name()
        if func.namespace in ("c10d", "_c10d_functional") and "wait" not in name and "wrap" not in name:
            if "alltoall_base" in name and len(args) > 4:
                t, splits = args[1], args[4]
                row = t.numel() // max(t.shape[0], 1) if t.ndim else 1
                own = splits[self.rank] * row if splits else t.numel() // max(len(splits) or 1, 1)
                self.bytes += (t.numel() - own) * t.element_size()
            else:
                first = args[0] if args else None
                tensors = first if isinstance(first, (list, tuple)) else [first]
                self.bytes += sum(x.numel() * x.element_size() for x in tensors if isinstance(x, torch.Tensor))
        return func(*args, **kwargs)


def _optimizers(made: Any) -> list[torch.optim.Optimizer]:
    """``optimizer_fn``'s result as a list: one optimizer, or several (Muon + AdamW)."""
    opts = list(made) if isinstance(made, (list, tuple)) else [made]
    bad = [type(o).__name__ for o in opts if not isinstance(o, torch.optim.Optimizer)]
    if not opts or bad:
        raise TypeError(
            "optimizer_fn(params) must return a torch.optim.Optimizer or a list of them, "
            f"got {type(made).__name__}{f' holding {bad}' if bad and opts else ''}"
        )
    return opts


def _run_steps(model: nn.Module, opts: list, inputs, loss_fn, steps: int, batch: int, rank: int | None):
    losses, comm = [], []
    for step in range(steps):
        x = _batch(model, inputs, step, batch)
        loss = loss_fn(model(x))
        loss.backward()
        counter = _CommCounter(rank or 0)
        if rank is None:
            for opt in opts:
                opt.step()
        else:
            with counter:
                for opt in opts:
                    opt.step()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        comm.append(counter.bytes)
    return losses, comm


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy that owns its storage.

    ``detach().cpu()`` alone is not a copy for a CPU tensor, and on a one-rank
    mesh ``DTensor.full_tensor()`` returns the local shard itself: the parameter's
    storage.  A snapshot taken that way before the steps changed with them.
    """
    return t.detach().cpu().clone()


def _replicated_state(opts: list) -> dict[str, Any]:
    """Every optimizer state entry and hyperparameter that should be equal on all ranks."""
    from torch.distributed.tensor import DTensor, Replicate

    out: dict[str, Any] = {}
    for oi, opt in enumerate(opts):
        where = f"optimizer {oi} " if len(opts) > 1 else ""
        names = {id(p): f"param {gi}.{j}" for gi, g in enumerate(opt.param_groups) for j, p in enumerate(g["params"])}
        for p, st in opt.state.items():
            for k, v in st.items():
                if isinstance(v, DTensor):
                    if not all(isinstance(pl, Replicate) for pl in v.placements):
                        continue  # sharded: each rank holds its own part
                    v = v.to_local()  # replicated: every rank must hold the same copy
                value = _snapshot(v) if isinstance(v, torch.Tensor) else v
                out[f"{where}{names.get(id(p), '?')} state[{k!r}]"] = value
        for gi, g in enumerate(opt.param_groups):
            for k, v in g.items():
                if k != "params":
                    out[f"{where}param_groups[{gi}][{k!r}]"] = repr(v) if callable(v) else v
    return out


def _worker(rank: int, world: int, model_fn, optimizer_fn, inputs, loss_fn, steps: int, batch: int, seed: int):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = model_fn()
    fully_shard(model)
    initial = {n: _snapshot(p.full_tensor()) for n, p in model.named_parameters()}
    opts = _optimizers(optimizer_fn(list(model.parameters())))
    losses, comm = _run_steps(model, opts, inputs, loss_fn, steps, batch, rank)
    full = {n: _snapshot(p.full_tensor()) for n, p in model.named_parameters()}
    return {"losses": losses, "comm": comm, "params": full, "initial": initial, "state": _replicated_state(opts)}


def _check_picklable(name: str, obj: Any) -> None:
    try:
        pickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001 - re-raised with the argument's name
        raise TypeError(
            f"{name} must be picklable (a module-level function or class): it is sent to "
            f"spawned processes ({type(exc).__name__}: {exc})"
        ) from None


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    denom = torch.linalg.vector_norm(b).item()
    diff = torch.linalg.vector_norm(a - b).item()
    return diff / denom if denom > 0 else diff


def _difference(a: Any, b: Any) -> str | None:
    """How ``b`` differs from ``a`` (``None``: bit-identical, NaN equal to NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{type(a).__name__} vs {type(b).__name__}"
        if a.dtype != b.dtype:
            return f"dtype {a.dtype} vs {b.dtype}"
        if a.shape != b.shape:
            return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        same = torch.equal(a, b) or (a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all()))
        return None if same else "values differ"
    if type(a) is not type(b):
        return f"{type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"length {len(a)} vs {len(b)}"
        return next((f"[{i}]: {d}" for i, (x, y) in enumerate(zip(a, b)) if (d := _difference(x, y))), None)
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return f"keys {sorted(map(repr, a))} vs {sorted(map(repr, b))}"
        return next((f"[{k!r}]: {d}" for k in a if (d := _difference(a[k], b[k]))), None)
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return None
    try:
        return None if bool(a == b) else f"{a!r} vs {b!r}"
    except Exception:  # noqa: BLE001 - incomparable values differ
        return f"{a!r} vs {b!r} (not comparable)"


def _state_mismatches(states: list[dict[str, Any]]) -> list[str]:
    """Every replicated-state key (union over ranks) that is missing on a rank or differs from
    the first rank that has it, one line each, naming the ranks."""
    keys = list(dict.fromkeys(k for st in states for k in st))
    out = []
    for key in keys:
        have = [r for r, st in enumerate(states) if key in st]
        missing = [r for r in range(len(states)) if r not in have]
        if missing:
            out.append(
                f"{key} missing on rank{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(str, missing))} (present on {', '.join(map(str, have))})"
            )
            continue
        first = have[0]
        for r in have[1:]:
            d = _difference(states[first][key], states[r][key])
            if d:
                out.append(f"{key}: rank {r} differs from rank {first} ({d})")
                break
    return out


def _worst(errors: list[tuple[str, float, float]]) -> tuple[str, float, float]:
    """The ``(name, error, limit)`` furthest over (or nearest to) its limit; NaN first."""

    def badness(item: tuple[str, float, float]) -> float:
        _, err, lim = item
        if not math.isfinite(err):
            return math.inf
        return err / lim if lim > 0 else (math.inf if err > 0 else 0.0)

    return max(errors, key=badness)


def _eps_units(err: float, dtype: torch.dtype) -> str:
    return f"{err / torch.finfo(dtype).eps:.3g} eps of {str(dtype).removeprefix('torch.')}"


def _precision_hint(err: float, used: torch.dtype) -> str:
    """Say so when ``err`` is float32 rounding while the tolerance assumed a finer dtype."""
    if torch.finfo(used).eps < torch.finfo(torch.float32).eps and err <= default_tol(torch.float32):
        return (
            f"; this is float32 rounding ({_eps_units(err, torch.float32)} ≤ {TOL_FACTOR:g}), not a sharding bug's "
            "size: if the optimizer computes in float32 (matfun's Muon/HiMuon/Muon2 do on the CPU unless "
            "precision='float64'), pass compute_dtype=torch.float32 (or tol=)"
        )
    return ""


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


def _integer(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_sharded_optimizer(
    model_fn: Callable[[], nn.Module],
    optimizer_fn: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    *,
    world_size: int = 2,
    steps: int = 3,
    inputs: Any = None,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] = mean_square,
    batch: int = 8,
    tol: float | None = None,
    compute_dtype: torch.dtype | str | None = None,
    seed: int = 0,
    timeout: float | None = 120.0,
) -> ShardedReport:
    """Run ``optimizer_fn`` on an FSDP2-sharded and an unsharded model and compare.

    Parameters
    ----------
    model_fn : callable
        ``model_fn()`` returns a fresh ``nn.Module`` with the same initial weights on
        every call (it is called after ``torch.manual_seed(seed)``).  Must be
        picklable: a module-level function or class.
    optimizer_fn : callable
        ``optimizer_fn(params)`` returns a torch optimizer for the list of the
        model's parameters, or a list of optimizers that share them out (e.g.
        ``Muon`` for the matrices and ``torch.optim.AdamW`` for biases and
        gains; every one steps each step).  Picklable.
    world_size : int, default 2
        Number of gloo processes on the CPU, >= 1 (1: a one-rank DTensor mesh).
    steps : int, default 3
        Optimizer steps, >= 1.
    inputs : sequence of Tensor or callable, optional
        The batch of each step (``inputs[step]`` or ``inputs(step)``); every rank and
        the reference see the same batch.  A sequence needs ``steps`` entries.
        Default: ``batch`` standard normal rows of the first ``nn.Linear``'s input width.
    loss_fn : callable, default :func:`mean_square`
        ``loss_fn(output) -> scalar``.  Picklable.
    batch : int, default 8
        Rows of the default inputs, >= 1.
    tol : float, optional
        Relative parameter error allowed, finite and >= 0.  Default:
        :func:`default_tol` per parameter, ``TOL_FACTOR * eps`` of the less precise
        of the parameter's dtype and ``compute_dtype`` (module doc); required for
        bfloat16/float16, which have no safe default.
    compute_dtype : torch.dtype or str, optional
        The precision the optimizer computes its update in, when coarser than the
        parameters' (a dtype or a matfun precision name: ``"float32"``...).  Set
        ``torch.float32`` for matfun's ``Muon``/``HiMuon``/``Muon2`` on a float64
        model unless they were given ``precision="float64"``: their CPU default is
        float32.  Default: the parameter's dtype.
    seed : int, default 0
    timeout : float or None, default 120
        Seconds for the whole sharded run, finite and > 0; a rank that hangs fails
        ``ranks_complete``.  ``None``: no limit.

    Returns
    -------
    ShardedReport

    Notes
    -----
    The single-process reference runs first, in this process: an exception
    raised there by ``model_fn``, ``optimizer_fn`` or ``loss_fn`` propagates.
    The ranks are spawned processes, which import the caller's main module: in
    a script, call this under ``if __name__ == "__main__":`` (pytest needs
    nothing).

    Raises
    ------
    TypeError
        ``model_fn``, ``optimizer_fn`` or ``loss_fn`` is not callable, one of them
        or ``inputs`` cannot be sent to a spawned process, or ``optimizer_fn``
        returned no optimizer.
    ValueError
        ``world_size``, ``steps`` or ``batch`` is not a positive integer, ``seed``
        not an integer, ``tol`` not finite and >= 0, ``timeout`` not finite and
        > 0 (nor ``None``), ``compute_dtype`` not a floating dtype, ``inputs`` has
        fewer than ``steps`` entries, or ``tol`` is missing for a bfloat16/float16
        parameter or compute dtype (raised before any process is spawned).

    Examples
    --------
    >>> report = check_sharded_optimizer(make_model, make_optimizer, world_size=2)  # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
    """
    world_size = _integer("world_size", world_size, 1)
    steps = _integer("steps", steps, 1)
    batch = _integer("batch", batch, 1)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if tol is not None and not (
        isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol >= 0 and math.isfinite(tol)
    ):
        raise ValueError(f"tol must be a finite number >= 0 or None, got {tol!r}")
    check_timeout(timeout)
    compute = _as_float_dtype(compute_dtype)
    for name, fn in (("model_fn", model_fn), ("optimizer_fn", optimizer_fn), ("loss_fn", loss_fn)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    if inputs is not None and not callable(inputs):
        if not isinstance(inputs, Sequence) or len(inputs) < steps:
            raise ValueError(
                f"inputs must be a callable or a sequence of at least steps={steps} batches, "
                f"got {type(inputs).__name__}{f' of {len(inputs)}' if isinstance(inputs, Sequence) else ''}"
            )
    for name, obj in (("model_fn", model_fn), ("optimizer_fn", optimizer_fn), ("loss_fn", loss_fn), ("inputs", inputs)):
        _check_picklable(name, obj)

    torch.manual_seed(int(seed))
    ref_model = model_fn()
    ref_initial = {n: _snapshot(p) for n, p in ref_model.named_parameters()}
    # per parameter: (tolerance, the dtype it derives from); before the reference steps or any spawn
    limits = {}
    for n, p in ref_initial.items():
        used = _coarser(p.dtype, compute) if p.is_floating_point() else torch.float64
        limits[n] = (float(tol) if tol is not None else default_tol(used), used)
    ref_opts = _optimizers(optimizer_fn(list(ref_model.parameters())))
    ref_losses, _ = _run_steps(ref_model, ref_opts, inputs, loss_fn, steps, batch, None)
    ref = {n: _snapshot(p) for n, p in ref_model.named_parameters()}

    settings: dict[str, Any] = {"world_size": world_size, "steps": steps}
    if compute is not None:
        settings["compute_dtype"] = str(compute).removeprefix("torch.")
    if tol is not None:
        settings["tol"] = tol
    report = ShardedReport(target=f"{getattr(optimizer_fn, '__qualname__', optimizer_fn)!s}", settings=settings)
    if all(torch.equal(p, ref_initial[n]) for n, p in ref.items()):
        report.checks.append(
            CheckResult(
                "params_match_reference",
                False,
                None,
                None,
                "the reference run changed no parameter (lr=0? no gradient?): there is nothing to compare",
            )
        )
        return report
    try:
        runs = run_distributed(
            _worker, world_size, model_fn, optimizer_fn, inputs, loss_fn, steps, batch, int(seed), timeout=timeout
        )
    except DistributedRunError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        others = [line for line in lines[1:] if line.startswith("(ranks")]
        error = [line for line in lines[1:] if not line.startswith("(ranks")]
        detail = " ".join(lines[:1] + error[-1:] + others)  # the exception's own line, not just "raised:"
        report.checks.append(CheckResult("ranks_complete", False, None, None, detail))
        return report
    report.checks.append(
        CheckResult("ranks_complete", True, world_size, world_size, f"{world_size} ranks × {steps} steps", ">=")
    )
    report.bytes_per_step = [r["comm"] for r in runs]

    initial = runs[0]["initial"]
    changed = [n for n in ref_initial if n not in initial or not _same_tensor(initial[n], ref_initial[n])]
    changed += [n for n in initial if n not in ref_initial]
    if changed:  # the comparison below would blame the optimizer for model_fn's randomness
        report.checks.append(
            CheckResult(
                "params_match_reference",
                False,
                None,
                None,
                f"model_fn() gave other initial weights in the sharded run than in the reference ({changed[0]!r}): "
                "it must return the same weights on every call (seed its initialisation)",
            )
        )
        return report
    errors = [(n, _relative_error(runs[0]["params"][n], p_ref), limits[n][0]) for n, p_ref in ref.items()]
    worst_name, worst, limit = _worst(errors)
    passed = math.isfinite(worst) and worst <= limit
    used = limits[worst_name][1]
    detail = f"worst parameter: {worst_name!r}"
    if math.isfinite(worst):
        detail += f" ({_eps_units(worst, used)}; tolerance {'tol=' if tol is not None else f'{TOL_FACTOR:g} eps'})"
        if not passed:
            detail += _precision_hint(worst, used)
    report.checks.append(CheckResult("params_match_reference", passed, worst, limit, detail))

    states = [r["state"] for r in runs]
    mismatches = _state_mismatches(states)
    keys = len(set().union(*states))
    if world_size == 1:
        detail = f"a single rank: nothing to compare ({keys} entries)"
    elif mismatches:
        detail = "; ".join(mismatches[:3]) + (f"; and {len(mismatches) - 3} more" if len(mismatches) > 3 else "")
    else:
        detail = f"{keys} entries compared on {world_size} ranks"
    report.checks.append(CheckResult("replicated_state_identical", not mismatches, len(mismatches), 0, detail))

    losses = [r["losses"] for r in runs]
    finite = all(math.isfinite(v) for ls in losses for v in ls)
    agree = all(ls == losses[0] for ls in losses)
    bad = [r for r, ls in enumerate(losses) if ls != losses[0] or not all(map(math.isfinite, ls))]
    report.checks.append(
        CheckResult(
            "ranks_agree",
            finite and agree,
            len(bad),
            0,
            f"ranks {bad} differ from rank 0 or are not finite"
            if bad
            else ("a single rank, finite " if world_size == 1 else "")
            + f"losses {', '.join(f'{v:.4g}' for v in losses[0])} "
            f"(reference {', '.join(f'{v:.4g}' for v in ref_losses)})",
        )
    )
    return report


def assert_sharded_optimizer(
    model_fn: Callable[[], nn.Module],
    optimizer_fn: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    **kwargs: Any,
) -> ShardedReport:
    """:func:`check_sharded_optimizer`, raising ``AssertionError`` with the table on failure."""
    report = check_sharded_optimizer(model_fn, optimizer_fn, **kwargs)
    if not report.passed:
        raise AssertionError("sharded optimizer failed " + ", ".join(report.failed_names) + "\n" + report.table())
    return report
