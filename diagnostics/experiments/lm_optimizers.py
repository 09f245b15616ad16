"""The ``lm`` experiment's optimizers: the names it parses, the rates it recorded, how it builds
and checks them, and what it measures of their steps (through :mod:`matfun.monitor`)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import matfun
import matfun.optim
from matfun.monitor import _optimizers as monitor_optimizers
from matfun.monitor import metrics as monitor_metrics

from ..errors import BadInput
from ..gpt import GPT
from ..plugins import USER_ERRORS, _raised, name_problem

if TYPE_CHECKING:
    from .lm import Config


#: The rates of the quick config: best final validation loss in :data:`QUICK_SWEEP`.
QUICK_LRS: tuple[tuple[str, float], ...] = (
    ("adamw", 0.003),
    ("muon_k5", 0.03),
    ("muon_k3", 0.03),
    ("himuon_t16", 0.01),
    ("himuon_t32", 0.01),
    ("himuon_full_t16", 0.01),
    ("muon2_k5", 0.03),
    ("muon2_k3", 0.03),
    ("muon2f_k5", 0.03),
    ("muon2f_k3", 0.03),
)
#: The recorded quick sweep: (optimizer, lr) → final validation loss (nats/byte) of replica 0,
#: ``None`` for a diverged run (none did).  Recorded 2026-11-23 on CPython 3.11.7, torch 2.13 (CPU), on the
#: default corpus with this SHA-256:
QUICK_SWEEP: dict[tuple[str, float], float | None] = {
    ("adamw", 0.001): 2.5350,
    ("adamw", 0.003): 2.3188,
    ("adamw", 0.01): 2.4740,
    ("adamw", 0.03): 2.6769,
    ("muon_k5", 0.001): 2.5601,
    ("muon_k5", 0.003): 2.3559,
    ("muon_k5", 0.01): 2.0772,
    ("muon_k5", 0.03): 1.9886,
    ("muon_k5", 0.1): 2.1982,
    ("muon_k3", 0.001): 2.5735,
    ("muon_k3", 0.003): 2.3842,
    ("muon_k3", 0.01): 2.1302,
    ("muon_k3", 0.03): 2.0271,
    ("muon_k3", 0.1): 2.1566,
    ("himuon_t16", 0.001): 2.5588,
    ("himuon_t16", 0.003): 2.3246,
    ("himuon_t16", 0.01): 2.0383,
    ("himuon_t16", 0.03): 2.1231,
    ("himuon_t32", 0.001): 2.5515,
    ("himuon_t32", 0.003): 2.3225,
    ("himuon_t32", 0.01): 1.9755,
    ("himuon_t32", 0.03): 2.0217,
    ("himuon_full_t16", 0.001): 2.5589,
    ("himuon_full_t16", 0.003): 2.3448,
    ("himuon_full_t16", 0.01): 2.0120,
    ("himuon_full_t16", 0.03): 2.0251,
    ("muon2_k5", 0.001): 2.5673,
    ("muon2_k5", 0.003): 2.3316,
    ("muon2_k5", 0.01): 1.9016,
    ("muon2_k5", 0.03): 1.8485,
    ("muon2_k5", 0.1): 2.0155,
    ("muon2_k3", 0.001): 2.5675,
    ("muon2_k3", 0.003): 2.3339,
    ("muon2_k3", 0.01): 1.9060,
    ("muon2_k3", 0.03): 1.8611,
    ("muon2_k3", 0.1): 2.0365,
    ("muon2f_k5", 0.001): 2.5631,
    ("muon2f_k5", 0.003): 2.3158,
    ("muon2f_k5", 0.01): 1.9139,
    ("muon2f_k5", 0.03): 1.8754,
    ("muon2f_k5", 0.1): 2.0200,
    ("muon2f_k3", 0.001): 2.5724,
    ("muon2f_k3", 0.003): 2.3384,
    ("muon2f_k3", 0.01): 1.9343,
    ("muon2f_k3", 0.03): 1.8882,
    ("muon2f_k3", 0.1): 2.0340,
}
QUICK_SWEEP_CORPUS = "2e31e854ce7c5a39d3549a94420e7ba4b51281ef0f32fc8b6ddd601eff6d7d42"

#: The full config's optimizers (HiMuon tiles: 1/4 and 1/2 of the model width).
DEFAULT_OPTIMIZERS = (
    "adamw",
    "muon_k5",
    "muon_k3",
    "himuon_t64",
    "himuon_t128",
    "himuon_full_t64",
    "muon2_k5",
    "muon2_k3",
    "muon2f_k5",
    "muon2f_k3",
)
#: The quick config's optimizers (same tile-to-width ratios on the 64-wide model).
QUICK_OPTIMIZERS = (
    "adamw",
    "muon_k5",
    "muon_k3",
    "himuon_t16",
    "himuon_t32",
    "himuon_full_t16",
    "muon2_k5",
    "muon2_k3",
    "muon2f_k5",
    "muon2f_k3",
)

#: What ``--quick`` trains (one seed each): the optimizers the claims compare — Muon K=5/3, HiMuon at
#: both tiles, Muon² K=5/3 — and AdamW.  Muon²-F and HiMuon full→tiles are in the recorded sweep and
#: the full config (``--set optimizers=...`` adds them): ten optimizers and two seeds took 4 minutes.
QUICK_RUN_OPTIMIZERS = ("adamw", "muon_k5", "muon_k3", "himuon_t16", "himuon_t32", "muon2_k5", "muon2_k3")


_BUILTIN = re.compile(r"^(adamw|muon_k(\d+)|himuon_t(\d+)|himuon_full_t(\d+)|muon2_k(\d+)|muon2f_k(\d+))$")
_PLUGIN = re.compile(r"^([A-Za-z_][A-Za-z0-9_\-]*)=([A-Za-z_][\w.]*):([A-Za-z_]\w*)$")


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A parsed optimizer name."""

    name: str
    family: str  # adamw, muon, himuon, muon2, muon2f, plugin
    ns_steps: int = 0
    tile: int = 0
    full_first: bool = False
    target: str = ""  # plug-in MODULE:FACTORY


_FAMILY_LABELS = {"adamw": "AdamW", "muon": "Muon", "himuon": "HiMuon", "muon2": "Muon²", "muon2f": "Muon²-F"}


def label(opt: Optimizer) -> str:
    """The optimizer's name in figures and tables."""
    if opt.family == "adamw":
        return "AdamW"
    if opt.family == "plugin":
        return f"{opt.name} (plug-in)"
    if opt.family == "himuon":
        return f"HiMuon full→T={opt.tile}" if opt.full_first else f"HiMuon T={opt.tile}"
    return f"{_FAMILY_LABELS[opt.family]} K={opt.ns_steps}"


def parse_optimizer(entry: str, ns_steps: int = 5) -> Optimizer:
    """Parse a built-in name (``muon_k3``, ``himuon_t64``, …) or a plug-in ``NAME=MODULE:FACTORY``."""
    m = _PLUGIN.match(entry)
    if m:
        problem = name_problem(m.group(1))
        if problem:
            raise BadInput(f"plug-in optimizer name {m.group(1)!r} {problem}")
        return Optimizer(m.group(1), "plugin", target=f"{m.group(2)}:{m.group(3)}")
    m = _BUILTIN.match(entry)
    if not m:
        raise BadInput(
            f"unknown optimizer {entry!r}: use adamw, muon_kK, himuon_tT, himuon_full_tT, muon2_kK, muon2f_kK "
            "or a plug-in NAME=MODULE:FACTORY"
        )
    if entry == "adamw":
        return Optimizer(entry, "adamw")
    k_muon, t, t_full, k2, k2f = m.group(2, 3, 4, 5, 6)
    if k_muon:
        return Optimizer(entry, "muon", int(k_muon))
    if t:
        return Optimizer(entry, "himuon", ns_steps, int(t))
    if t_full:
        return Optimizer(entry, "himuon", ns_steps, int(t_full), full_first=True)
    return Optimizer(entry, "muon2" if k2 else "muon2f", int(k2 or k2f))


# ----------------------------------------------------------------------------- plug-ins


def load_factory(opt: Optimizer) -> Callable:
    """Import a plug-in's factory; :class:`BadInput` (one line) when it cannot be used."""
    module_name, attr = opt.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except USER_ERRORS as exc:  # any import failure (sys.exit() included) is the plug-in's
        raise BadInput(f"plug-in optimizer {opt.name!r}: cannot import {module_name!r}: {_raised(exc)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BadInput(f"plug-in optimizer {opt.name!r}: {opt.target} is missing or not callable")
    return factory


def _source_hash(factory: Callable) -> str:
    module = inspect.getmodule(factory)
    source: str | None = None
    if module is not None:
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            pass
    if source is None:
        source = getattr(factory, "__qualname__", repr(factory))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- optimizers


def split_model(model: GPT) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """``(hidden matrices, the rest)`` by :func:`matfun.optim.split_params`: the blocks' 2-D weights
    vs embeddings, the read-out head and the LayerNorm vectors."""
    hidden, rest = matfun.optim.split_params(model)
    return [p for _, p in hidden], [p for _, p in rest]


def make_optimizers(config: Config, opt: Optimizer, lr: float, model: GPT, total_steps: int) -> list:
    """``[matrix optimizer, AdamW]`` (just ``[AdamW]`` for ``adamw``)."""
    adamw_kw: dict[str, Any] = {
        "lr": lr,
        "betas": tuple(config.adam_betas),
        "weight_decay": config.weight_decay,
        "eps": 1e-8,
    }
    if opt.family == "adamw":
        return [torch.optim.AdamW(model.parameters(), **adamw_kw)]
    hidden, other = split_model(model)
    common: dict[str, Any] = {
        "lr": lr,
        "weight_decay": config.weight_decay,
        "momentum": config.momentum,
        "adjust_lr_fn": "match_rms_adamw",
    }
    main: torch.optim.Optimizer
    if opt.family == "muon":
        main = matfun.optim.Muon(hidden, ns_steps=opt.ns_steps, **common)
    elif opt.family == "himuon":
        tile: int | list[tuple[int, int | None]] = opt.tile
        if opt.full_first:
            tile = [(0, None), (max(1, round(config.himuon_full_frac * total_steps)), opt.tile)]
        main = matfun.optim.HiMuon(hidden, tile=tile, ns_steps=opt.ns_steps, **common)
    elif opt.family in ("muon2", "muon2f"):
        main = matfun.optim.Muon2(hidden, factorized=opt.family == "muon2f", ns_steps=opt.ns_steps, **common)
    else:
        factory = load_factory(opt)
        try:
            main = factory(hidden, lr)
        except USER_ERRORS as exc:  # a raising factory (sys.exit() included) is the plug-in's problem
            raise BadInput(f"plug-in optimizer {opt.name!r} ({opt.target}) raised {_raised(exc)}") from None
        if not isinstance(main, torch.optim.Optimizer):
            raise BadInput(
                f"plug-in optimizer {opt.name!r} ({opt.target}) returned {type(main).__name__}, "
                "not a torch.optim.Optimizer"
            )
        check_coverage(main, model, hidden, f"plug-in optimizer {opt.name!r} ({opt.target})")
    return [main, torch.optim.AdamW(other, **adamw_kw)]


def check_coverage(optimizer: torch.optim.Optimizer, model: GPT, hidden: list, what: str) -> None:
    """Refuse an optimizer that does not optimise exactly the hidden matrices, each once.

    Training with some matrices frozen (or with the AdamW parameters optimised twice)
    would not compare optimizers; :class:`BadInput` names what is missing or extra.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    given = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [id(p) for p in given]
    missing = [names.get(id(p), "?") for p in hidden if id(p) not in ids]
    extra = [names.get(i, "a tensor not in the model") for i in dict.fromkeys(ids) if i not in {id(p) for p in hidden}]
    twice = sorted({names.get(i, "?") for i in ids if ids.count(i) > 1})
    problems = []
    if missing:
        problems.append(
            f"does not optimise {len(missing)} of the {len(hidden)} hidden matrices "
            f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}; they would stay frozen)"
        )
    if extra:
        problems.append(f"optimises {len(extra)} parameter(s) it was not given ({', '.join(extra[:3])})")
    if twice:
        problems.append(f"lists {', '.join(twice[:3])} more than once")
    if problems:
        raise BadInput(f"{what}: {'; '.join(problems)}; it must optimise exactly the hidden matrices it is given")


def lr_factor(config: Config, step: int) -> float:
    """Linear warm-up, then cosine decay towards 0; ``step`` is the 1-based update index.

    Warm-up: ``step / W`` for ``step ≤ W = round(warmup_frac · steps)``; then
    ``(1 + cos(π (step − W − 1) / (steps − W))) / 2``: 1 at the first update after
    warm-up, small but positive at the last one (so every update moves the weights).
    """
    warm = round(config.warmup_frac * config.steps)
    if warm and step <= warm:
        return step / warm
    progress = (step - warm - 1) / max(config.steps - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


class _OrthTimer:
    """Wall time inside the orthogonalisation phase of matfun's optimizers, CUDA-synchronised.

    Every :mod:`matfun.optim` optimizer computes all its updates in one
    ``_orthogonalize`` call per step (the Newton–Schulz maps; for Muon² also the
    division by ``√V + ε``); :meth:`attach` times that call on one instance.
    """

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync, self.seconds = sync, 0.0

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, (matfun.optim.Muon, matfun.optim.HiMuon, matfun.optim.Muon2)):
            return
        inner = optimizer._orthogonalize

        def timed(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.sync()
                self.seconds += time.perf_counter() - t0

        # A per-instance wrap of the method (mypy refuses assigning to a method; setattr says it is meant).
        setattr(optimizer, "_orthogonalize", timed)  # noqa: B010


def _group_of(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    return next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))


def _alignment(before: list[torch.Tensor], hidden: Sequence[torch.Tensor], optimizer) -> dict[str, float]:
    """Over the hidden matrices: mean and minimum of ``cos(−ΔW, polar(M))`` and the mean of
    ``cos(−ΔW, polar(map input))``, measured by :mod:`matfun.monitor` (the update direction with
    decoupled weight decay separated out, float64); NaN where unknown."""
    to_momentum, to_input = [], []
    for w0, p in zip(before, hidden):
        group = _group_of(optimizer, p)
        M = monitor_optimizers.update_momentum(optimizer, p, group)
        lr = monitor_optimizers.lr_of(group)
        if M is None or not lr:
            return {"alignment": math.nan, "alignment_min": math.nan, "alignment_ns": math.nan}
        decay = monitor_optimizers.decoupled_decay(optimizer, group, None)
        u = monitor_metrics.update_direction(w0, p, lr, decay, dtype=torch.float64)
        to_momentum.append(monitor_metrics.alignment(u, M.double()))
        X = monitor_optimizers.map_input(optimizer, p, group)
        to_input.append(math.nan if X is None else monitor_metrics.alignment(u, X.double()))
    return {
        "alignment": float(np.mean(to_momentum)),
        "alignment_min": float(np.min(to_momentum)),
        "alignment_ns": float(np.mean(to_input)),
    }
