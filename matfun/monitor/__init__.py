"""``matfun.monitor``: see inside a real training run, for any ``torch.optim.Optimizer``.

:class:`Monitor` attaches to an optimizer through torch's own step hooks
(``register_step_pre_hook`` / ``register_step_post_hook``): no change to the training
code, and no change to the training (the hooks read, clone and compute out of place under
``torch.no_grad()``, and draw no random numbers from torch's generators).  Every ``every``
steps it records, for each matrix parameter, the metrics of :mod:`matfun.monitor.metrics`
(the update's RMS, spectral norm and singular-value range, its orthogonality, its alignment
with the polar factors of the momentum and the gradient, the orthogonalising map's error
where the map's input can be reconstructed, optional what-if probes); on *every* step it
checks gradients and weights for NaN/Inf.

>>> import torch
>>> from matfun.monitor import Monitor
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> x, y = torch.randn(32, 8), torch.randn(32, 1)
>>> with Monitor(opt, every=2, model=model) as monitor:
...     for _ in range(4):
...         opt.zero_grad()
...         torch.nn.functional.mse_loss(model(x), y).backward()
...         opt.step()
>>> sorted(set(monitor.frame()["param"]))
['0.weight', '2.weight']
"""

from __future__ import annotations

import csv
import fnmatch
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from . import _optimizers as O
from .metrics import METRICS, PROBES, MissingInput, parameter_metrics

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "METRICS", "NONFINITE_GRAD", "NONFINITE_UPDATE", "Monitor", "parameter_metrics"]

#: The columns of :meth:`Monitor.frame` (and of a saved log).
COLUMNS = ("step", "param", "metric", "value")
#: ``value`` of a ``metric == "nonfinite"`` row: the gradient had NaN/Inf before the step ...
NONFINITE_GRAD = 1.0
#: ... or the step wrote NaN/Inf into the parameter (the update is not finite).
NONFINITE_UPDATE = 2.0


@dataclass
class _Param:
    name: str
    tensor: Tensor
    group: int


def _is_dtensor(t: Tensor) -> bool:
    return type(t).__name__ == "DTensor" or hasattr(t, "to_local")


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _check_writable_file(path: Any, what: str) -> Path:
    try:
        path = Path(os.fspath(path))
    except TypeError:
        raise TypeError(f"{what} must be a path, got {type(path).__name__}") from None
    if path.is_dir():
        raise ValueError(f"cannot write the {what} {str(path)!r}: it is a directory")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write the {what} {str(path)!r}: directory {str(path.parent)!r} does not exist")
    try:
        with open(path, "a"):
            pass
    except OSError as error:
        raise ValueError(f"cannot write the {what} {str(path)!r}: {error.strerror or error}") from None
    return path


def _check_writable_dir(path: Any, what: str) -> Path:
    path = Path(os.fspath(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".matfun-monitor-probe"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write the {what} {str(path)!r}: {error.strerror or error}") from None
    return path


class Monitor:
    """Record what an optimizer's steps do to each matrix parameter, without changing them.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Any torch optimizer (torch's SGD, Adam(W), Muon; matfun's Muon, HiMuon, Muon2; yours).
    every : int, default 100
        Record the metrics on steps ``every, 2·every, …`` (the monitor's count of completed
        ``optimizer.step()`` calls from attachment).  Non-finite checks run on every step.
    model : torch.nn.Module, optional
        Names parameters as ``model.named_parameters()`` does; otherwise the param group's
        ``param_names`` (``named_parameters()`` given to the optimizer), else the stable
        index ``"param_groups[i][j]"``.
    params : iterable of str / Tensor, or callable(name, tensor) -> bool, optional
        Which matrix parameters to record: names or ``fnmatch`` patterns (``"*.attn.*"``),
        the tensors themselves, or a predicate.  Default: every parameter with ``ndim ≥ 2``
        (conv kernels flattened to ``(out, in·k·k)``); 1-D ones are skipped and noted once.
    sample : int, optional
        Record only this many of the selected parameters per recorded step, drawn without
        replacement by the monitor's own ``numpy.random.Generator(seed)`` (bounds the cost on
        big models; torch's random state is never touched).
    seed : int, default 0
    momentum_key : str or callable(optimizer, param) -> Tensor | None, default "momentum_buffer"
        Where the momentum lives in ``optimizer.state[p]`` (torch's SGD and Muon, and
        matfun's optimizers, use ``"momentum_buffer"``; ``"exp_avg"`` for Adam).
    decoupled_weight_decay : bool, optional
        Whether the group's ``weight_decay`` is decoupled (``θ ← θ(1 − lr·λ) − lr·u``) and so
        separated out of the update.  Default: inferred (AdamW, torch's Muon, matfun's
        optimizers and ``decoupled_weight_decay=True`` groups: yes; SGD/Adam's L2: no).
    probes : sequence of {"tiling", "muon2"}, default ()
        What-if probes on the momentum (off by default, each costs SVDs): what tiling at
        ``tile`` would lose (``whatif_tiling_loss``); how Muon²'s preconditioning would change
        its conditioning (``momentum_cond`` vs ``whatif_muon2_cond``; the optimizer's own second
        moment when it has one, else one the monitor keeps, updated on every step).
    tile : int or (int, int), default 128
    log : path, optional
        Stream every record to this CSV file as it is made (checked writable here; a
        ``.parquet`` path is written when the monitor detaches).
    tensorboard : path, optional
        Also write every record as a scalar ``metric/param`` through
        ``torch.utils.tensorboard.SummaryWriter(tensorboard)`` (needs ``pip install tensorboard``).
    sink : callable(record: dict) -> None, optional
        Receives each record ``{"step", "param", "metric", "value"}``, e.g.
        ``sink=lambda r: wandb.log({f"{r['metric']}/{r['param']}": r["value"]}, step=r["step"])``.
    dump_nonfinite : path, optional
        Directory for ``torch.save`` dumps of the offending tensors of the first
        ``max_dumps`` non-finite events.
    max_events, max_dumps : int
        Caps on the recorded non-finite events (default 1000) and dumps (default 10).
    polar_method : {"auto", "svd", "qdwh"}, default "auto"
        :func:`matfun.polar`'s method for the exact polar factors.
    dtype : torch.dtype, default torch.float32
        Compute dtype of the metrics.

    Attributes
    ----------
    notes : list of str
        What could not be recorded and why (each reason once): 1-D parameters, sharded
        DTensors, metrics that failed; a failure is also warned once.  Nothing the monitor
        does raises inside ``optimizer.step()``.
    events : list of dict
        The non-finite events: ``step``, ``param``, ``tensor`` ("gradient" or "update"),
        ``count`` (non-finite entries), ``dump`` (the file, or None).  An event is recorded
        when a parameter's gradient, or the parameter itself (a non-finite update), turns
        non-finite, not again while it stays so; the first one is also warned.

    Raises
    ------
    TypeError
        ``optimizer`` not a ``torch.optim.Optimizer``; ``sink`` not callable; bad ``params``.
    ValueError
        ``every < 1``, an unwritable ``log`` / ``dump_nonfinite`` path, unknown ``probes``,
        a ``params`` filter that selects no matrix parameter.
    ImportError
        ``tensorboard=`` without the tensorboard package.

    Notes
    -----
    The update of a recorded step is ``ΔW = θ_after − θ_before`` (the pre-hook clones only the
    parameters recorded at that step, only on recorded steps).  With decoupled weight decay
    the update direction is ``u = (θ_before(1 − lr·λ) − θ_after)/lr``.  The map's input
    (``map_error``) is reconstructed for ``torch.optim.Muon`` and matfun's Muon, HiMuon and
    Muon2.  Gradients are checked for NaN/Inf in the pre-hook (before matfun's optimizers
    would reject them), weights in the post-hook: one sum per tensor and one host
    synchronisation per hook (an exact per-tensor check only when a sum is not finite).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        every: int = 100,
        model: torch.nn.Module | None = None,
        params: Iterable | Callable[[str, Tensor], bool] | None = None,
        sample: int | None = None,
        seed: int = 0,
        momentum_key: str | Callable = "momentum_buffer",
        decoupled_weight_decay: bool | None = None,
        probes: Sequence[str] = (),
        tile: int | tuple[int, int] = 128,
        log: Any = None,
        tensorboard: Any = None,
        sink: Callable[[dict], Any] | None = None,
        dump_nonfinite: Any = None,
        max_events: int = 1000,
        max_dumps: int = 10,
        polar_method: str = "auto",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Monitor needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if sample is not None and (isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1):
            raise ValueError(f"sample must be None or an integer >= 1, got {sample!r}")
        probes = (probes,) if isinstance(probes, str) else tuple(probes)
        bad = set(probes) - set(PROBES)
        if bad:
            raise ValueError(f"unknown probes {sorted(bad)}; choose from {PROBES}")
        if sink is not None and not callable(sink):
            raise TypeError(f"sink must be callable, got {type(sink).__name__}")
        if not (isinstance(momentum_key, str) or callable(momentum_key)):
            raise TypeError(f"momentum_key must be a state key (str) or a callable, got {type(momentum_key).__name__}")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if polar_method not in ("auto", "svd", "qdwh"):
            raise ValueError(f"polar_method must be 'auto', 'svd' or 'qdwh', got {polar_method!r}")
        for what, cap in (("max_events", max_events), ("max_dumps", max_dumps)):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
                raise ValueError(f"{what} must be an integer >= 0, got {cap!r}")
        self.optimizer = optimizer
        self.every = int(every)
        self.sample = None if sample is None else int(sample)
        self.momentum_key = momentum_key
        self.decoupled_weight_decay = decoupled_weight_decay
        self.probes = probes
        self.tile = tile
        self.polar_method = polar_method
        self.dtype = dtype
        self.max_events, self.max_dumps = max_events, max_dumps
        self.sink = sink
        self.notes: list[str] = []
        self.events: list[dict] = []
        self.step = 0  #: completed optimizer steps since attachment
        self._noted: set = set()
        self._records: list[tuple[int, str, str, float]] = []
        self._rng = np.random.default_rng(seed)
        self._names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        self._filter = self._make_filter(params)
        self._params: list[_Param] = []
        self._param_count = -1
        self._refresh()
        if params is not None and not self._selected():
            raise ValueError(
                "the params filter selects no matrix parameter of the optimizer; its parameters are: "
                + ", ".join(f"{q.name} {tuple(q.tensor.shape)}" for q in self._params[:20])
            )
        self._snap: dict[int, dict] = {}
        self._nonfinite_now: set[int] = set()  # parameters that are non-finite now
        self._nonfinite_grad: set[int] = set()  # ... whose gradient was at the last check
        self._shape_done: set[str] = set()
        self._own_moment: dict[int, Tensor] = {}
        self._dumps = 0
        # outputs, checked here so that a bad path fails now, not mid-training
        self.log_path = None if log is None else _check_writable_file(log, "monitor log")
        self.dump_dir = (
            None if dump_nonfinite is None else _check_writable_dir(dump_nonfinite, "non-finite dump directory")
        )
        self._csv_file = self._csv = None
        if self.log_path is not None and self.log_path.suffix.lower() != ".parquet":
            self._csv_file = open(self.log_path, "w", newline="")
            self._csv = csv.writer(self._csv_file)
            self._csv.writerow(COLUMNS)
            self._csv_file.flush()
        self._tb = None
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ImportError(
                    "Monitor(tensorboard=...) needs the tensorboard package: pip install tensorboard "
                    "(or pip install 'matfun[monitor]')"
                ) from error
            _check_writable_dir(tensorboard, "tensorboard directory")
            self._tb = SummaryWriter(os.fspath(tensorboard))
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        ]
        self.attached = True

    # -- parameters ------------------------------------------------------------------------

    def _make_filter(self, params: Any) -> Callable[[str, Tensor], bool]:
        if params is None:
            return lambda name, p: True
        if callable(params):
            return params
        if isinstance(params, (str, Tensor)):
            params = [params]
        try:
            items = list(params)
        except TypeError:
            raise TypeError("params must be names, patterns, tensors or a callable(name, tensor)") from None
        patterns = [x for x in items if isinstance(x, str)]
        ids = {id(x) for x in items if isinstance(x, Tensor)}
        if len(patterns) + len(ids) != len(items):
            raise TypeError("params must be names, patterns, tensors or a callable(name, tensor)")
        return lambda name, p: id(p) in ids or any(fnmatch.fnmatchcase(name, pat) for pat in patterns)

    def _refresh(self) -> None:
        """(Re)build the parameter list when the optimizer's parameters changed."""
        count = sum(len(g["params"]) for g in self.optimizer.param_groups)
        if count == self._param_count:
            return
        self._param_count = count
        self._params = []
        for gi, group in enumerate(self.optimizer.param_groups):
            names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                name = self._names.get(id(p)) or (
                    str(names[j]) if names and j < len(names) else f"param_groups[{gi}][{j}]"
                )
                self._params.append(_Param(name, p, gi))

    def _selected(self) -> list[_Param]:
        out = []
        for q in self._params:
            try:
                chosen = bool(self._filter(q.name, q.tensor))
            except Exception as error:  # noqa: BLE001
                self._note(("filter", q.name), f"the params filter raised on {q.name}: {error!r}; skipped", warn=True)
                continue
            if not chosen:
                continue
            if q.tensor.ndim < 2:
                self._note(
                    ("1d", q.name), f"{q.name}: shape {tuple(q.tensor.shape)} is not a matrix; no matrix metrics"
                )
                continue
            if q.tensor.numel() == 0:
                continue
            if _is_dtensor(q.tensor):
                self._note(
                    ("dtensor", q.name), f"{q.name}: a sharded DTensor, which the monitor does not gather; skipped"
                )
                continue
            out.append(q)
        return out

    # -- notes and outputs --------------------------------------------------------------------

    def _note(self, key: Any, message: str, warn: bool = False) -> None:
        if key in self._noted:
            return
        self._noted.add(key)
        self.notes.append(message)
        if warn:
            try:  # a "-W error" filter must not turn this into an exception in the user's step
                warnings.warn(f"matfun.monitor: {message}", RuntimeWarning, stacklevel=3)
            except Exception:  # noqa: BLE001
                pass

    def _emit(self, step: int, param: str, metric: str, value: float) -> None:
        value = float(value)
        self._records.append((step, param, metric, value))
        if self._csv is not None:
            try:
                self._csv.writerow((step, param, metric, repr(value)))
            except Exception as error:  # noqa: BLE001
                self._note(("log",), f"writing the log {self.log_path} failed: {error!r}", warn=True)
        if self._tb is not None:
            try:
                self._tb.add_scalar(f"{metric}/{param}", value, step)
            except Exception as error:  # noqa: BLE001
                self._note(("tensorboard",), f"writing to tensorboard failed: {error!r}", warn=True)
        if self.sink is not None:
            try:
                self.sink({"step": step, "param": param, "metric": metric, "value": value})
            except Exception as error:  # noqa: BLE001
                self._note(("sink",), f"the sink raised {error!r}", warn=True)

    def _flush(self) -> None:
        try:
            if self._csv_file is not None:
                self._csv_file.flush()
            if self._tb is not None:
                self._tb.flush()
        except Exception as error:  # noqa: BLE001
            self._note(("flush",), f"flushing the outputs failed: {error!r}", warn=True)

    # -- hooks ----------------------------------------------------------------------------------

    def _recording(self, step: int) -> bool:
        return step % self.every == 0

    def _pre_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        try:
            with torch.no_grad():
                self._pre(self.step + 1)
        except Exception as error:  # noqa: BLE001 - never inside the user's step
            self._note(("pre-hook", type(error).__name__), f"the monitor's pre-step hook failed: {error!r}", warn=True)

    def _post_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.step += 1
        try:
            with torch.no_grad():
                self._post(self.step)
        except Exception as error:  # noqa: BLE001
            self._note(
                ("post-hook", type(error).__name__), f"the monitor's post-step hook failed: {error!r}", warn=True
            )
        finally:
            self._snap = {}
            self._flush()

    def _pre(self, step: int) -> None:
        self._refresh()
        self._snap = {}
        with_grad = [(q, q.tensor.grad) for q in self._params if q.tensor.grad is not None]
        now = set()
        for i in self._nonfinite([grad for _, grad in with_grad]):
            q, grad = with_grad[i]
            now.add(id(q.tensor))
            if id(q.tensor) not in self._nonfinite_grad:  # newly non-finite
                self._event(step, q, "gradient", grad)
        self._nonfinite_grad = now
        if not self._recording(step):
            return
        chosen = self._selected()
        if self.sample is not None and self.sample < len(chosen):
            picks = sorted(self._rng.choice(len(chosen), size=self.sample, replace=False).tolist())
            chosen = [chosen[i] for i in picks]
        groups = self.optimizer.param_groups
        for q in chosen:
            group = groups[q.group]
            lr = O.lr_of(group)
            if lr is None or not lr > 0:
                self._note(("lr", q.name), f"{q.name}: the param group has no positive lr; no update metrics")
                continue
            try:
                scale = O.step_plan(self.optimizer, q.tensor, group)
            except Exception as error:  # noqa: BLE001
                self._note(("map_error", q.name), f"{q.name}: map_error: {error!r}", warn=True)
                scale = None
            self._snap[id(q.tensor)] = {
                "param": q,
                "before": q.tensor.detach().clone(),
                "lr": lr,
                "scale": scale,
                "weight_decay": O.decoupled_decay(self.optimizer, group, self.decoupled_weight_decay),
            }

    def _post(self, step: int) -> None:
        params = [q for q in self._params if q.tensor.numel() > 0]
        bad = set(self._nonfinite([q.tensor for q in params]))
        now = set()
        for i in bad:
            q = params[i]
            now.add(id(q.tensor))
            if id(q.tensor) not in self._nonfinite_now:  # newly non-finite: the update was
                self._event(step, q, "update", q.tensor)
        self._nonfinite_now = now
        if "muon2" in self.probes:
            self._update_own_moments()
        for key, snap in self._snap.items():
            q = snap["param"]
            if key in now:
                continue  # a non-finite update: recorded as an event, no metrics
            self._record_param(step, q, snap)

    def _record_param(self, step: int, q: _Param, snap: dict) -> None:
        p, group = q.tensor, self.optimizer.param_groups[q.group]

        def failed(metric: str, error: Exception) -> None:
            reason = str(error) if isinstance(error, MissingInput) else repr(error)
            self._note(
                (metric, q.name), f"{q.name}: {metric} not computed: {reason}", warn=not isinstance(error, MissingInput)
            )

        def read(metric: str, fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except Exception as error:  # noqa: BLE001
                failed(metric, error)
                return None

        momentum = read("alignment_momentum", lambda: O.momentum_of(self.optimizer, p, self.momentum_key))
        if momentum is None:
            self._note(
                ("no momentum", q.name),
                f"{q.name}: no momentum in the optimizer state (key {self.momentum_key!r}); no alignment_momentum",
            )
        X = read("map_error", lambda: O.map_input(self.optimizer, p, group)) if snap["scale"] is not None else None
        V = None
        if "muon2" in self.probes:
            V = read("whatif_muon2_cond", lambda: O.second_moment_of(self.optimizer, p))
            if V is None:
                V = self._own_moment.get(id(p))
        metrics = parameter_metrics(
            snap["before"],
            p,
            lr=snap["lr"],
            weight_decay=snap["weight_decay"],
            momentum=momentum,
            grad=p.grad,
            map_input=X,
            map_scale=snap["scale"] or 1.0,
            probes=self.probes,
            tile=self.tile,
            second_moment=V,
            second_moment_eps=O.second_moment_eps(self.optimizer, group),
            polar_method=self.polar_method,
            dtype=self.dtype,
            on_error=failed,
        )
        if q.name not in self._shape_done:
            self._shape_done.add(q.name)
            self._emit(step, q.name, "rows", p.shape[0])
            self._emit(step, q.name, "cols", p[0].numel())
        self._emit(step, q.name, "lr", snap["lr"])
        for metric, value in metrics.items():
            self._emit(step, q.name, metric, value)

    def _update_own_moments(self, beta2: float = 0.95) -> None:
        """The probe's second moment for optimizers without one: ``V ← β₂V + (1−β₂)G²``, every step."""
        for q in self._selected():
            g = q.tensor.grad
            if g is None or O.second_moment_of(self.optimizer, q.tensor) is not None:
                continue
            g2 = g.detach().to(torch.float32).square()
            old = self._own_moment.get(id(q.tensor))
            self._own_moment[id(q.tensor)] = (1 - beta2) * g2 if old is None else beta2 * old + (1 - beta2) * g2

    # -- non-finite checks ------------------------------------------------------------------------

    def _nonfinite(self, tensors: list[Tensor]) -> list[int]:
        """Indices of the tensors with NaN/Inf, cheaply: the fast path sums every tensor (a NaN
        or Inf entry makes the sum non-finite) and fetches one flag per hook (one host sync);
        only when that flag is raised (or a sum overflowed) does an exact per-tensor check run."""
        items = [(i, _local(t).detach()) for i, t in enumerate(tensors)]
        items = [(i, t) for i, t in items if t.numel() and t.is_floating_point()]
        if not items:
            return []
        buckets: dict[tuple, list[Tensor]] = {}
        for _, t in items:
            buckets.setdefault((t.device, t.dtype), []).append(t)
        totals = []
        for (_, dtype), ts in buckets.items():
            wide = torch.float64 if dtype == torch.float64 else torch.float32  # float16 sums overflow at 65504
            totals.append(torch.stack([t.sum(dtype=wide) for t in ts]).sum().double().cpu())
        if bool(torch.isfinite(torch.stack(totals)).all()):
            return []
        flags = torch.stack([torch.isfinite(t).all().cpu() for _, t in items])
        return [items[k][0] for k in torch.nonzero(~flags).flatten().tolist()]

    def _event(self, step: int, q: _Param, kind: str, tensor: Tensor) -> None:
        if len(self.events) >= self.max_events:
            self._note(
                ("max_events",), f"more than {self.max_events} non-finite events; the rest are not recorded", warn=True
            )
            return
        t = _local(tensor).detach()
        count = int((~torch.isfinite(t)).sum())
        dump = None
        if self.dump_dir is not None and self._dumps < self.max_dumps:
            self._dumps += 1
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", q.name)
            dump = self.dump_dir / f"nonfinite_step{step}_{safe}_{kind}.pt"
            payload = {"step": step, "param": q.name, "tensor": kind, "value": t.cpu().clone()}
            if kind == "gradient":
                payload["parameter"] = _local(q.tensor).detach().cpu().clone()
            elif id(q.tensor) in self._snap:
                payload["before"] = self._snap[id(q.tensor)]["before"].cpu()
            try:
                torch.save(payload, dump)
            except Exception as error:  # noqa: BLE001
                self._note(("dump",), f"dumping a non-finite tensor to {dump} failed: {error!r}", warn=True)
                dump = None
        self.events.append(
            {"step": step, "param": q.name, "tensor": kind, "count": count, "dump": None if dump is None else str(dump)}
        )
        self._emit(step, q.name, "nonfinite", NONFINITE_GRAD if kind == "gradient" else NONFINITE_UPDATE)
        self._note(
            ("nonfinite",),
            f"first non-finite event: the {kind} of {q.name} at step {step} ({count} "
            "entries); every event is in monitor.events and in the frame (metric 'nonfinite')",
            warn=True,
        )

    # -- results ------------------------------------------------------------------------------------

    def frame(self) -> pd.DataFrame:
        """The records as a tidy ``pandas.DataFrame`` with columns ``step, param, metric, value``."""
        import pandas as pd

        frame = pd.DataFrame(self._records, columns=list(COLUMNS))
        return frame.astype({"step": "int64", "param": "string", "metric": "string", "value": "float64"})

    def save(self, path: Any, format: str | None = None) -> Path:
        """Write :meth:`frame` to ``path``: CSV, or Parquet (``format="parquet"`` or a
        ``.parquet`` suffix; needs pyarrow).  Returns the path."""
        path = Path(os.fspath(path))
        fmt = format or ("parquet" if path.suffix.lower() == ".parquet" else "csv")
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"format must be 'csv' or 'parquet', got {format!r}")
        frame = self.frame()
        if fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError as error:
                raise ImportError("saving Parquet needs pyarrow (pip install pyarrow); save as .csv instead") from error
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        return path

    # -- lifetime -------------------------------------------------------------------------------------

    def detach(self) -> None:
        """Remove the hooks and close the outputs (idempotent); the records stay readable."""
        if not getattr(self, "attached", False):
            return
        self.attached = False
        for handle in self._handles:
            handle.remove()
        self._snap = {}
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = self._csv = None
        elif self.log_path is not None:  # .parquet
            self.save(self.log_path)
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return (
            f"Monitor({type(self.optimizer).__name__}, every={self.every}, step={self.step}, "
            f"records={len(self._records)}, events={len(self.events)}, {state})"
        )
