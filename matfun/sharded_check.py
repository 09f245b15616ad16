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
    ``max ‖θ_sharded − θ_ref‖_F / ‖θ_ref‖_F`` over parameters, at most ``tol``
    (default per dtype, below); the detail names the worst parameter.  Running
    full Newton–Schulz separately on each rank's shard — the classic bug of
    distributed Muon — fails here (the relative error is of order 1).  It
    also fails, saying so, when ``model_fn`` gave the sharded run other initial
    weights than the reference, or when the reference changed no parameter
    (nothing would have been compared).
``replicated_state_identical``
    optimizer state that is not sharded (step counts, Muon²-F's column
    statistics, hyperparameters) is bit-identical on every rank.
``ranks_agree``
    every rank saw the same, finite loss at every step.

The report also carries the communication measured inside ``optimizer.step``:
the payload bytes each rank handed to torch.distributed collectives (c10d and
functional collectives, counted at the dispatcher), per step.

Tolerances: ``float64`` 1e-9 (Newton–Schulz is a composition of matrix
products; sharded and unsharded runs differ only in summation order, ~1e-15 per
step, amplified by at most the polynomial's slope ~10 per step), ``float32``
1e-4, ``bfloat16``/``float16`` 5e-2.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._spawn import DistributedRunError, run_distributed
from .testing import CheckResult, Report

__all__ = ["ShardedReport", "assert_sharded_optimizer", "check_sharded_optimizer"]

DEFAULT_TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 5e-2}


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


def _replicated_state(opts: list) -> dict[str, Any]:
    from torch.distributed.tensor import DTensor

    out: dict[str, Any] = {}
    for oi, opt in enumerate(opts):
        where = f"optimizer {oi} " if len(opts) > 1 else ""
        names = {id(p): f"param {gi}.{j}" for gi, g in enumerate(opt.param_groups) for j, p in enumerate(g["params"])}
        for p, st in opt.state.items():
            for k, v in st.items():
                if isinstance(v, DTensor):
                    continue
                value = v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
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
    initial = {n: p.full_tensor().detach().cpu() for n, p in model.named_parameters()}
    opts = _optimizers(optimizer_fn(list(model.parameters())))
    losses, comm = _run_steps(model, opts, inputs, loss_fn, steps, batch, rank)
    full = {n: p.full_tensor().detach().cpu() for n, p in model.named_parameters()}
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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b) or (a.isnan() & b.isnan()).all())
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values differ
        return False


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
    seed: int = 0,
    timeout: float = 120.0,
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
        Number of gloo processes on the CPU.
    steps : int, default 3
    inputs : list of Tensor or callable, optional
        The batch of each step (``inputs[step]`` or ``inputs(step)``); every rank and
        the reference see the same batch.  Default: ``batch`` standard normal rows
        of the first ``nn.Linear``'s input width.
    loss_fn : callable, default :func:`mean_square`
        ``loss_fn(output) -> scalar``.  Picklable.
    batch : int, default 8
    tol : float, optional
        Relative parameter error allowed; default by parameter dtype (module doc).
    seed : int, default 0
    timeout : float, default 120
        Seconds for the whole sharded run; a rank that hangs fails ``ranks_complete``.

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
        ``model_fn``, ``optimizer_fn``, ``loss_fn`` or ``inputs`` cannot be sent to
        a spawned process, or ``optimizer_fn`` returned no optimizer.
    ValueError
        Bad ``world_size``, ``steps``, ``batch`` or ``tol``.

    Examples
    --------
    >>> report = check_sharded_optimizer(make_model, make_optimizer, world_size=2)  # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
    """
    for name, value, low in (("world_size", world_size, 1), ("steps", steps, 1), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0 or None, got {tol!r}")
    for name, obj in (("model_fn", model_fn), ("optimizer_fn", optimizer_fn), ("loss_fn", loss_fn), ("inputs", inputs)):
        _check_picklable(name, obj)

    torch.manual_seed(seed)
    ref_model = model_fn()
    ref_initial = {n: p.detach().clone() for n, p in ref_model.named_parameters()}
    ref_opts = _optimizers(optimizer_fn(list(ref_model.parameters())))
    ref_losses, _ = _run_steps(ref_model, ref_opts, inputs, loss_fn, steps, batch, None)
    ref = {n: p.detach() for n, p in ref_model.named_parameters()}

    report = ShardedReport(
        target=f"{getattr(optimizer_fn, '__qualname__', optimizer_fn)!s}",
        settings={"world_size": world_size, "steps": steps},
    )
    if all(torch.equal(p, ref_initial[n]) for n, p in ref.items()):
        report.checks.append(CheckResult(
            "params_match_reference", False, None, None,
            "the reference run changed no parameter (lr=0? no gradient?): there is nothing to compare",
        ))
        return report
    try:
        runs = run_distributed(
            _worker, world_size, model_fn, optimizer_fn, inputs, loss_fn, steps, batch, seed, timeout=timeout
        )
    except DistributedRunError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        others = [line for line in lines[1:] if line.startswith("(ranks")]
        error = [line for line in lines[1:] if not line.startswith("(ranks")]
        detail = " ".join(lines[:1] + error[-1:] + others)  # the exception's own line, not just "raised:"
        report.checks.append(CheckResult("ranks_complete", False, None, None, detail))
        return report
    report.checks.append(CheckResult("ranks_complete", True, world_size, world_size, f"{world_size} ranks × {steps} steps", ">="))
    report.bytes_per_step = [r["comm"] for r in runs]

    changed = [n for n, p in runs[0]["initial"].items() if not torch.equal(p, ref_initial[n])]
    if changed:  # the comparison below would blame the optimizer for model_fn's randomness
        report.checks.append(CheckResult(
            "params_match_reference", False, None, None,
            f"model_fn() gave other initial weights in the sharded run than in the reference ({changed[0]!r}): "
            "it must return the same weights on every call (seed its initialisation)",
        ))
        return report
    worst, worst_name, limit = 0.0, "", 0.0
    for name, p_ref in ref.items():
        err = _relative_error(runs[0]["params"][name], p_ref)
        lim = tol if tol is not None else DEFAULT_TOL.get(p_ref.dtype, 1e-4)
        if not math.isfinite(err) or err / lim > (worst / limit if limit else -1):
            worst, worst_name, limit = err, name, lim
    passed = math.isfinite(worst) and worst <= limit
    report.checks.append(
        CheckResult("params_match_reference", passed, worst, limit, f"worst parameter: {worst_name!r}")
    )

    mismatches = [k for k in runs[0]["state"] for r in runs[1:] if not _same(runs[0]["state"][k], r["state"].get(k))]
    report.checks.append(
        CheckResult(
            "replicated_state_identical", not mismatches, len(mismatches), 0,
            f"differs across ranks: {mismatches[0]}" if mismatches else f"{len(runs[0]['state'])} entries compared",
        )
    )

    losses = [r["losses"] for r in runs]
    finite = all(math.isfinite(v) for ls in losses for v in ls)
    agree = all(ls == losses[0] for ls in losses)
    bad = [r for r, ls in enumerate(losses) if ls != losses[0] or not all(map(math.isfinite, ls))]
    report.checks.append(
        CheckResult(
            "ranks_agree", finite and agree, len(bad), 0,
            f"ranks {bad} differ from rank 0 or are not finite" if bad else
            f"losses {', '.join(f'{v:.4g}' for v in losses[0])} (reference {', '.join(f'{v:.4g}' for v in ref_losses)})",
        )
    )
    return report


def assert_sharded_optimizer(model_fn, optimizer_fn, **kwargs: Any) -> ShardedReport:
    """:func:`check_sharded_optimizer`, raising ``AssertionError`` with the table on failure."""
    report = check_sharded_optimizer(model_fn, optimizer_fn, **kwargs)
    if not report.passed:
        raise AssertionError("sharded optimizer failed " + ", ".join(report.failed_names) + "\n" + report.table())
    return report
