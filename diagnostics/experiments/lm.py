"""Language-model bench: a byte-level GPT trained with AdamW, Muon, HiMuon, Muon² and Muon²-F.

It tests the two headline training claims where they are made:

* HiMuon: the tiled map "keeps training behaviour close to full-matrix Muon" while
  the optimizer step gets cheaper;
* Muon²: second-moment preconditioning "outperforms Muon" in GPT pre-training
  "while reducing NS iterations by 40%" (Muon² at K = 3 against Muon at K = 5).

Model and data
    :class:`diagnostics.gpt.GPT` (pre-norm blocks, causal attention, GELU MLP,
    rotary or learned positions, byte vocabulary of 256) on
    :mod:`diagnostics.corpus`: by default the standard library's top-level
    ``.py`` files (``corpus=""``), or any file or directory (``corpus=PATH``).
    Interleaved-block train/validation split (every 10th block of 8 KiB is
    validation).  A training batch is ``batch_size`` windows of ``context + 1``
    bytes at uniformly random offsets; the validation loss is the mean
    next-byte cross-entropy (nats per byte) over ``val_windows`` fixed windows
    spread evenly over the validation bytes.

Optimizers (``Config.optimizers``; names are parsed, so any K or tile can be asked for)
    ``adamw`` — AdamW on every parameter.  The others put the hidden matrices
    (:func:`matfun.optim.split_params`: ``qkv``, attention ``proj``, MLP ``fc``
    and ``proj`` of every block) on a matrix optimizer and the rest (embedding,
    read-out, LayerNorms) on AdamW, both at the run's one learning rate:
    ``muon_kK`` (:class:`matfun.optim.Muon`, K Newton–Schulz steps),
    ``himuon_tT`` (:class:`matfun.optim.HiMuon`, tiles T×T, K = ``ns_steps``),
    ``himuon_full_tT`` (HiMuon on full matrices for the first ``himuon_full_frac``
    of the steps, then T×T tiles), ``muon2_kK`` and ``muon2f_kK``
    (:class:`matfun.optim.Muon2`, full and factorised second moment).  Every
    matrix optimizer uses ``adjust_lr_fn="match_rms_adamw"`` (update RMS 0.2 per
    entry; HiMuon per tile), so one learning-rate grid fits all; Jordan's
    quintic, Nesterov momentum ``momentum``, Muon² ``beta2`` = 0.95, ``ε`` = 1e-8.
    AdamW: betas ``adam_betas``, ε = 1e-8.  Weight decay ``weight_decay``
    (decoupled, all optimizers).

    Plug-ins: an entry ``"NAME=MODULE:FACTORY"`` calls ``FACTORY(hidden_matrices,
    lr)`` (a list of parameters and a float) for a ``torch.optim.Optimizer``; the
    rest goes to AdamW as for the built-ins (command line: ``--optimizer
    NAME=MODULE:FACTORY``).  A plug-in that fails to import, raises, returns no
    optimizer or writes NaN/Inf into the weights from finite gradients raises
    :class:`diagnostics.errors.BadInput` (one line, exit 2; the cell is not cached).
    A plug-in's cells carry a hash of its module's source, so editing it
    invalidates its cached cells (and only those).

Fairness
    All runs with the same seed start from the same weights and see the same
    batches in the same order (both drawn from the run seed alone) for the same
    number of steps.  Learning rate: linear warm-up over the first
    ``warmup_frac`` of the steps, then cosine decay to 0.  Each optimizer runs at
    its own learning rate: the rate given for it in ``lrs`` (recorded from a
    sweep), otherwise every rate of ``lr_grid`` — the figures and table use, per
    optimizer, the rate with the lowest mean final validation loss over the
    seeds among those where no seed diverged.

Divergence
    A run diverges when a mini-batch or validation loss is NaN/Inf or exceeds
    ``diverge_loss`` (nats/byte; a uniform guess scores ln 256 ≈ 5.55).  It stops
    there and is recorded (``diverged``, ``diverged_step``, ``final_val_loss``
    NaN), drawn as a cross on the figures and counted in the table; an lr at
    which any seed diverged is never chosen as best.

Cells
    One per (optimizer, lr, replica) with ``replica`` in ``seeds``, each keyed by the
    corpus's SHA-256 too (``corpus_sha256``: a corpus file rewritten in place gets new
    cells, and one that changes during the run stops it); the weights and
    batches come from :func:`diagnostics.store.cell_seed` of the run's seed and
    the replica (so ``--seed``/``--seeds`` on the command line give new replicas).

Rows
    One per evaluation (``step`` = 0, every ``eval_every`` updates, and the last):
    ``val_loss``, ``train_loss`` (mean mini-batch loss since the previous row),
    ``tokens``, ``opt_ms_cum`` and ``orth_ms_cum`` (cumulative optimizer-step and
    orthogonalisation time), ``alignment``/``alignment_min`` (mean/worst over the
    hidden matrices of ``cos(ΔW, polar(M))``: the update actually applied at
    that step against the exact polar factor of the momentum the optimizer
    orthogonalises — Nesterov ``g.lerp(B, μ)`` for the Muon family, AdamW's
    ``exp_avg``; plug-ins: their ``momentum_buffer``/``exp_avg`` state, else NaN),
    ``alignment_ns`` (mean ``cos(ΔW, polar(X))`` with ``X`` what Newton–Schulz was
    applied to: ``M`` for Muon and HiMuon, ``M ⊘ (√V + ε)`` for Muon²; NaN otherwise),
    plus the per-run summaries ``final_val_loss``, ``diverged``,
    ``diverged_step``, ``step_ms_{median,q25,q75}``, ``orth_ms_{median,q25,q75}``,
    ``rest_ms_{median,q25,q75}`` (per update; orthogonalisation = the
    optimizer's Newton–Schulz phase, for Muon² including the division by
    √V + ε; rest = momentum, checks, the weight update and the AdamW step), and
    ``family``, ``ns_steps``, ``tile``, ``lr_source``, ``unigram_entropy``,
    ``corpus_sha256``, ``corpus_bytes``, ``corpus_files``, ``python_version``,
    ``n_params_hidden``, ``n_params_other``.

    One more cell, ``{"benchmark": "optimizer_step"}``, times every optimizer's
    step on the same gradients with the optimizers interleaved round by round
    (``timing_rounds`` rounds; rows ``optimizer``, ``round``, ``bench_step_ms``,
    ``bench_orth_ms``): the step times of the table, of figure ``lm_loss`` (c) and
    of the HiMuon figure come from it, because on a shared machine load changes
    between training runs would bias a comparison of their own step times.

Figures (losses: cross-entropy in nats per byte)
    ``lm_loss``: (a) validation loss against step (mean, band min–max over seeds)
    with the byte-unigram entropy as a reference line; (b) against cumulative
    optimizer time; (c) median optimizer-step time split into orthogonalisation
    and the rest.  ``lm_k``: final loss and alignment against K for Muon, Muon²
    and Muon²-F.  ``lm_himuon``: HiMuon's final loss against tile size, and its
    step time.  ``lm_lr``: the learning-rate sweep.  ``lm.md``: the table and a
    verdict on each claim.

Quick config and where its rates come from
    ``Config.quick()`` (64-wide, 2 layers, context 64, batch 16, 300 steps, one seed)
    runs the optimizers of :data:`QUICK_RUN_OPTIMIZERS` at their rates in :data:`QUICK_LRS`
    (one seed gives no standard error: the findings then count only differences above
    ``match_tol`` and say so, and figure ``lm_loss`` notes it): the best final
    validation loss of the sweep :data:`QUICK_SWEEP`, recorded with
    ``Config.quick_sweep()`` (the same model, one seed, every rate of
    ``(1e-3, 3e-3, 1e-2, 3e-2)``, and ``1e-1`` for the six optimizers whose best
    rate was the grid's edge ``3e-2``) via :func:`diagnostics.store.run_experiment`
    (``python -m diagnostics run lm --quick --set lrs="()" --set seeds="(0,)"``
    once ``--set`` exists).  Plug-ins are swept over ``(3e-3, 1e-2, 3e-2)``.
    The full config sweeps every optimizer over ``lr_grid`` with 3 seeds.

Full config (sized, not yet measured: no GPU in development)
    256 wide, 4 layers, context 256, batch 32, 500 steps (4.1 M tokens, about one
    epoch of the default corpus), 10 optimizers × 5 rates × 3 seeds = 150 runs,
    estimated at 5–8 s each on one H100 (launch-bound: the model is 3.2 M
    parameters), i.e. 13–20 min.

Timing
    On CPU the run uses ``cpu_threads`` threads (default 1, restored afterwards):
    on a small shared CPU, hand-offs to a second thread stall unpredictably and
    the small products of this model do not need them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import math
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import matfun
import matfun.optim
from matfun.monitor import _optimizers as monitor_optimizers
from matfun.monitor import metrics as monitor_metrics

from .. import plotting
from ..corpus import load_corpus, split, unigram_entropy
from ..errors import BadInput
from ..gpt import GPT, GPTConfig
from ..plugins import USER_ERRORS, _raised, name_problem
from ..store import cell_seed
from ..threads import torch_threads

NAME = "lm"
#: The command line may add plug-in optimizers (``--optimizer NAME=MODULE:FACTORY``).
PLUGIN_OPTIMIZERS = True
DESCRIPTION = "byte-level GPT on the stdlib: AdamW vs Muon, HiMuon, Muon2/Muon2-F (K=5, K=3), lr sweep, seeds"

#: The rates of the quick config: best final validation loss in :data:`QUICK_SWEEP`.
QUICK_LRS: tuple[tuple[str, float], ...] = (
    ('adamw', 0.003), ('muon_k5', 0.03), ('muon_k3', 0.03), ('himuon_t16', 0.01), ('himuon_t32', 0.01),
    ('himuon_full_t16', 0.01), ('muon2_k5', 0.03), ('muon2_k3', 0.03), ('muon2f_k5', 0.03), ('muon2f_k3', 0.03),
)
#: The recorded quick sweep: (optimizer, lr) → final validation loss (nats/byte) of replica 0,
#: ``None`` for a diverged run (none did).  Recorded 2026-11-23 on CPython 3.11.7, torch 2.13 (CPU), on the
#: default corpus with this SHA-256:
QUICK_SWEEP: dict[tuple[str, float], float | None] = {
    ('adamw', 0.001): 2.5350, ('adamw', 0.003): 2.3188, ('adamw', 0.01): 2.4740, ('adamw', 0.03): 2.6769,
    ('muon_k5', 0.001): 2.5601, ('muon_k5', 0.003): 2.3559, ('muon_k5', 0.01): 2.0772, ('muon_k5', 0.03): 1.9886, ('muon_k5', 0.1): 2.1982,
    ('muon_k3', 0.001): 2.5735, ('muon_k3', 0.003): 2.3842, ('muon_k3', 0.01): 2.1302, ('muon_k3', 0.03): 2.0271, ('muon_k3', 0.1): 2.1566,
    ('himuon_t16', 0.001): 2.5588, ('himuon_t16', 0.003): 2.3246, ('himuon_t16', 0.01): 2.0383, ('himuon_t16', 0.03): 2.1231,
    ('himuon_t32', 0.001): 2.5515, ('himuon_t32', 0.003): 2.3225, ('himuon_t32', 0.01): 1.9755, ('himuon_t32', 0.03): 2.0217,
    ('himuon_full_t16', 0.001): 2.5589, ('himuon_full_t16', 0.003): 2.3448, ('himuon_full_t16', 0.01): 2.0120, ('himuon_full_t16', 0.03): 2.0251,
    ('muon2_k5', 0.001): 2.5673, ('muon2_k5', 0.003): 2.3316, ('muon2_k5', 0.01): 1.9016, ('muon2_k5', 0.03): 1.8485, ('muon2_k5', 0.1): 2.0155,
    ('muon2_k3', 0.001): 2.5675, ('muon2_k3', 0.003): 2.3339, ('muon2_k3', 0.01): 1.9060, ('muon2_k3', 0.03): 1.8611, ('muon2_k3', 0.1): 2.0365,
    ('muon2f_k5', 0.001): 2.5631, ('muon2f_k5', 0.003): 2.3158, ('muon2f_k5', 0.01): 1.9139, ('muon2f_k5', 0.03): 1.8754, ('muon2f_k5', 0.1): 2.0200,
    ('muon2f_k3', 0.001): 2.5724, ('muon2f_k3', 0.003): 2.3384, ('muon2f_k3', 0.01): 1.9343, ('muon2f_k3', 0.03): 1.8882, ('muon2f_k3', 0.1): 2.0340,
}
QUICK_SWEEP_CORPUS = "2e31e854ce7c5a39d3549a94420e7ba4b51281ef0f32fc8b6ddd601eff6d7d42"

#: The full config's optimizers (HiMuon tiles: 1/4 and 1/2 of the model width).
DEFAULT_OPTIMIZERS = (
    "adamw", "muon_k5", "muon_k3", "himuon_t64", "himuon_t128", "himuon_full_t64",
    "muon2_k5", "muon2_k3", "muon2f_k5", "muon2f_k3",
)
#: The quick config's optimizers (same tile-to-width ratios on the 64-wide model).
QUICK_OPTIMIZERS = (
    "adamw", "muon_k5", "muon_k3", "himuon_t16", "himuon_t32", "himuon_full_t16",
    "muon2_k5", "muon2_k3", "muon2f_k5", "muon2f_k3",
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


@dataclasses.dataclass(frozen=True)
class Config:
    """Model, corpus, budget and optimizers of the bench (defaults: the full run, one GPU)."""

    corpus: str = ""
    context: int = 256
    width: int = 256
    depth: int = 4
    heads: int = 4
    positions: str = "rotary"
    batch_size: int = 32
    steps: int = 500
    eval_every: int = 50
    val_windows: int = 256
    val_fraction: float = 0.1
    optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS
    lrs: tuple[tuple[str, float], ...] = ()
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    seeds: tuple[int, ...] = (0, 1, 2)
    ns_steps: int = 5
    himuon_full_frac: float = 0.1
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    momentum: float = 0.95
    adam_betas: tuple[float, float] = (0.9, 0.95)
    diverge_loss: float = 8.0
    match_tol: float = 0.01
    timing_rounds: int = 50
    cpu_threads: int = 1

    def __post_init__(self) -> None:
        GPTConfig(self.context, self.width, self.depth, self.heads, 4, self.positions)
        parsed = [parse_optimizer(o, self.ns_steps) for o in self.optimizers]
        names = [p.name for p in parsed]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"optimizers must be distinct and non-empty, got {self.optimizers}")
        for name, lr in self.lrs:
            if name not in names or not lr > 0:
                raise ValueError(f"lrs: {name!r}={lr!r} must name an optimizer in use and be positive")
        if any(not lr > 0 for lr in self.lr_grid) or len(set(self.lr_grid)) != len(self.lr_grid):
            raise ValueError(f"lr_grid must be distinct positive rates, got {self.lr_grid}")
        if not self.lr_grid and any(n not in dict(self.lrs) for n in names):
            raise ValueError("lr_grid is empty but some optimizers have no rate in lrs")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative ints, got {self.seeds}")
        if self.steps < 2 or self.eval_every < 1 or self.batch_size < 1 or self.val_windows < 1:
            raise ValueError("need steps >= 2, eval_every >= 1, batch_size >= 1, val_windows >= 1")
        if not (0 <= self.warmup_frac < 1 and 0 <= self.himuon_full_frac < 1):
            raise ValueError("warmup_frac and himuon_full_frac must lie in [0, 1)")
        if self.cpu_threads < 0 or self.ns_steps < 1 or self.timing_rounds < 0:
            raise ValueError("need cpu_threads >= 0 (0: leave torch's setting), ns_steps >= 1, timing_rounds >= 0")

    @classmethod
    def full(cls) -> "Config":
        return cls()

    @classmethod
    def quick(cls) -> "Config":
        """The CPU-sized bench: the optimizers of :data:`QUICK_RUN_OPTIMIZERS` at their recorded
        rates :data:`QUICK_LRS`, one seed (plug-ins swept over three rates)."""
        rates = tuple((name, lr) for name, lr in QUICK_LRS if name in QUICK_RUN_OPTIMIZERS)
        return cls.quick_sweep(optimizers=QUICK_RUN_OPTIMIZERS, lrs=rates, lr_grid=(3e-3, 1e-2, 3e-2), seeds=(0,))

    @classmethod
    def quick_sweep(cls, **overrides) -> "Config":
        """The quick model swept over the whole grid on one seed (how :data:`QUICK_LRS` was found)."""
        base = dict(context=64, width=64, depth=2, heads=4, batch_size=16, steps=300, eval_every=25,
                    val_windows=64, optimizers=QUICK_OPTIMIZERS, lr_grid=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
                    seeds=(0,), timing_rounds=20)
        base.update(overrides)
        return cls(**base)

    def parsed(self) -> list[Optimizer]:
        return [parse_optimizer(o, self.ns_steps) for o in self.optimizers]

    def gpt(self) -> GPTConfig:
        return GPTConfig(self.context, self.width, self.depth, self.heads, 4, self.positions)


# ----------------------------------------------------------------------------- plug-ins


def load_factory(opt: Optimizer) -> Callable:
    """Import a plug-in's factory; :class:`BadInput` (one line) when it cannot be used."""
    module_name, attr = opt.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except USER_ERRORS as exc:  # any import failure (sys.exit() included) is the plug-in's
        raise BadInput(f"plug-in optimizer {opt.name!r}: cannot import {module_name!r}: "
                       f"{_raised(exc)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BadInput(f"plug-in optimizer {opt.name!r}: {opt.target} is missing or not callable")
    return factory


def _source_hash(factory: Callable) -> str:
    try:
        source = inspect.getsource(inspect.getmodule(factory))
    except (OSError, TypeError):
        source = getattr(factory, "__qualname__", repr(factory))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- cells


def cells(config: Config) -> list[dict]:
    """Plug-ins first (a broken one fails before any built-in is trained), then the built-ins."""
    recorded = dict(config.lrs)
    parsed = config.parsed()
    # the corpus's content, not only its path, is part of every cell's cache key
    digest = load_corpus(config.corpus).sha256
    out, sources = [], []
    for opt in sorted(parsed, key=lambda o: o.family != "plugin"):
        extra = {}
        if opt.family == "plugin":
            extra = {"plugin": opt.target, "plugin_source": _source_hash(load_factory(opt))}
            sources.append(f"{opt.name}:{extra['plugin_source']}")
        rates = (recorded[opt.name],) if opt.name in recorded else config.lr_grid
        for lr in rates:
            for replica in config.seeds:
                out.append({"optimizer": opt.name, "lr": float(lr), "replica": int(replica), **extra,
                            "corpus_sha256": digest})
    if config.timing_rounds:
        out.append({"benchmark": "optimizer_step", "plugin_source": ",".join(sources), "corpus_sha256": digest})
    return out


# ----------------------------------------------------------------------------- optimizers


def split_model(model: GPT) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """``(hidden matrices, the rest)`` by :func:`matfun.optim.split_params`: the blocks' 2-D weights
    vs embeddings, the read-out head and the LayerNorm vectors."""
    hidden, rest = matfun.optim.split_params(model)
    return [p for _, p in hidden], [p for _, p in rest]


def make_optimizers(config: Config, opt: Optimizer, lr: float, model: GPT, total_steps: int) -> list:
    """``[matrix optimizer, AdamW]`` (just ``[AdamW]`` for ``adamw``)."""
    adamw_kw = {"lr": lr, "betas": tuple(config.adam_betas), "weight_decay": config.weight_decay, "eps": 1e-8}
    if opt.family == "adamw":
        return [torch.optim.AdamW(model.parameters(), **adamw_kw)]
    hidden, other = split_model(model)
    common = {"lr": lr, "weight_decay": config.weight_decay, "momentum": config.momentum,
              "adjust_lr_fn": "match_rms_adamw"}
    if opt.family == "muon":
        main = matfun.optim.Muon(hidden, ns_steps=opt.ns_steps, **common)
    elif opt.family == "himuon":
        tile = opt.tile
        if opt.full_first:
            tile = [(0, None), (max(1, int(round(config.himuon_full_frac * total_steps))), opt.tile)]
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
            raise BadInput(f"plug-in optimizer {opt.name!r} ({opt.target}) returned {type(main).__name__}, "
                           "not a torch.optim.Optimizer")
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
        problems.append(f"does not optimise {len(missing)} of the {len(hidden)} hidden matrices "
                        f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}; they would stay frozen)")
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
    warm = int(round(config.warmup_frac * config.steps))
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

        optimizer._orthogonalize = timed


def _group_of(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    return next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))


def _alignment(before: list[torch.Tensor], hidden: list[torch.Tensor], optimizer) -> dict[str, float]:
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
    return {"alignment": float(np.mean(to_momentum)), "alignment_min": float(np.min(to_momentum)),
            "alignment_ns": float(np.mean(to_input))}


# ----------------------------------------------------------------------------- run


def _corpus_for(config: Config, cell: dict):
    """The corpus, checked against the content hash the cell was keyed by (:class:`BadInput` if it changed)."""
    corpus = load_corpus(config.corpus)
    expected = cell.get("corpus_sha256")
    if expected is not None and corpus.sha256 != expected:
        raise BadInput(f"corpus {config.corpus or 'stdlib'!r} changed during the run (sha256 {corpus.sha256[:12]}, "
                       f"the run started with {expected[:12]}); rerun")
    return corpus


def run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    with torch_threads(config.cpu_threads or None):
        if "benchmark" in cell:
            return _benchmark(config, device, seed, cell)
        return _train(config, cell, device, seed)


def _benchmark(config: Config, device: str, seed: int, cell: dict | None = None) -> pd.DataFrame:
    """Optimizer-step times of every optimizer on the same gradients, interleaved round by round.

    One model and one batch give the gradients; every optimizer gets its own copy of
    the model with those gradients and takes ``timing_rounds`` steps, one per round,
    in an order rotated each round (ABC, BCA, CAB, …) so that a change of machine
    load hits all optimizers alike.  Two untimed warm-up steps each.  HiMuon with a
    full→T schedule is timed in its tiled phase.  Rows: ``optimizer``, ``round``,
    ``bench_step_ms``, ``bench_orth_ms`` (NaN for plug-ins).
    """
    corpus = _corpus_for(config, cell or {})
    train, _ = split(corpus, config.context, config.val_fraction)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cell_seed(seed, {"lm": "benchmark"}) % 2**63)
        model = GPT(config.gpt())
        starts = torch.randint(0, train.size - config.context, (config.batch_size,))
    model.to(device)
    w = torch.from_numpy(train.astype(np.int64))[starts[:, None] + torch.arange(config.context + 1)].to(device)
    model.loss(w[:, :-1], w[:, 1:]).backward()
    cuda = torch.device(device).type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    runs = []
    for opt in config.parsed():
        copy = GPT(config.gpt()).to(device)
        copy.load_state_dict(model.state_dict())
        for q, p in zip(copy.parameters(), model.parameters()):
            q.grad = p.grad.clone()
        rate = dict(config.lrs).get(opt.name, config.lr_grid[0] if config.lr_grid else 1e-3)
        opts = make_optimizers(config, opt, rate, copy, config.steps)
        if opt.full_first:
            for g in opts[0].param_groups:
                g["step_count"] = config.steps  # past the switch to tiles
        runs.append((opt, opts))
    timer = _OrthTimer(sync)
    for _, opts in runs:
        timer.attach(opts[0])
    rows = []
    for r in range(-2, config.timing_rounds):
        for i in range(len(runs)):
            opt, opts = runs[(i + max(r, 0)) % len(runs)]
            orth0 = timer.seconds
            sync()
            t0 = time.perf_counter()
            try:
                for o in opts:
                    o.step()
            except USER_ERRORS as exc:
                if opt.family != "plugin":
                    raise
                raise BadInput(f"plug-in optimizer {opt.name!r} ({opt.target}) raised {_raised(exc)} "
                               "in the step-time benchmark") from None
            sync()
            if r >= 0:
                rows.append({"optimizer": opt.name, "round": r, "bench_step_ms": 1e3 * (time.perf_counter() - t0),
                             "bench_orth_ms": math.nan if opt.family == "plugin" else 1e3 * (timer.seconds - orth0)})
    return pd.DataFrame(rows)


_TOKENS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_ENTROPY: dict[str, float] = {}


def _as_tokens(corpus, context: int, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The train and validation bytes as int64 CPU tensors, once per corpus content (read-only)."""
    key = (corpus.sha256, context, val_fraction)
    if key not in _TOKENS:
        train, val = split(corpus, context, val_fraction)
        _TOKENS.clear()  # one corpus at a time
        _TOKENS[key] = torch.from_numpy(train.astype(np.int64)), torch.from_numpy(val.astype(np.int64))
    return _TOKENS[key]


def _entropy(corpus) -> float:
    """:func:`unigram_entropy` of the corpus, once per content."""
    if corpus.sha256 not in _ENTROPY:
        _ENTROPY[corpus.sha256] = unigram_entropy(corpus.data)
    return _ENTROPY[corpus.sha256]


def _train(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    opt = next(o for o in config.parsed() if o.name == cell["optimizer"])
    lr = float(cell["lr"])
    corpus = _corpus_for(config, cell)
    train, val = _as_tokens(corpus, config.context, config.val_fraction)
    run = {"lm": "run", "replica": int(cell["replica"])}
    init_seed, order_seed = cell_seed(seed, {**run, "use": "init"}), cell_seed(seed, {**run, "use": "order"})
    ctx, bs = config.context, config.batch_size

    train_t, val_t = train.to(device), val.to(device)
    offsets = torch.arange(ctx + 1, device=device)
    order = torch.Generator().manual_seed(order_seed % 2**63)
    starts = torch.randint(0, train.numel() - ctx, (config.steps, bs), generator=order).to(device)
    val_starts = torch.linspace(0, val.numel() - ctx - 1, config.val_windows).long().to(device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed % 2**63)
        model = GPT(config.gpt())
    model.to(device)
    hidden = split_model(model)[0]
    opts = make_optimizers(config, opt, lr, model, config.steps)
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    cuda = torch.device(device).type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        total = 0.0
        for chunk in val_starts.split(max(bs, 1)):
            w = val_t[chunk[:, None] + offsets]
            total += float(model.loss(w[:, :-1], w[:, 1:])) * len(chunk)
        model.train()
        return total / len(val_starts)

    eval_steps = sorted({0, config.steps, *range(config.eval_every, config.steps, config.eval_every)})
    rows: list[dict] = []
    step_s, orth_s, batch_losses = [], [], []
    opt_cum = orth_cum = 0.0
    diverged_step = -1
    timer = _OrthTimer(sync)
    timer.attach(opts[0])

    def diverging(x: float) -> bool:
        return not math.isfinite(x) or x > config.diverge_loss

    no_alignment = {"alignment": math.nan, "alignment_min": math.nan, "alignment_ns": math.nan}

    def record(k: int, val_loss: float, align: dict[str, float]) -> None:
        rows.append({"step": k, "val_loss": val_loss,
                     "train_loss": float(np.mean(batch_losses)) if batch_losses else math.nan,
                     "tokens": k * bs * ctx, "opt_ms_cum": 1e3 * opt_cum, "orth_ms_cum": 1e3 * orth_cum, **align})
        batch_losses.clear()

    record(0, evaluate(), no_alignment)
    for k in range(1, config.steps + 1):
        factor = lr_factor(config, k)
        for o, lrs in zip(opts, base_lrs):
            for g, base in zip(o.param_groups, lrs):
                g["lr"] = base * factor
        w = train_t[starts[k - 1][:, None] + offsets]
        loss = model.loss(w[:, :-1], w[:, 1:])
        loss_value = float(loss.detach())
        if diverging(loss_value):
            diverged_step = k
            break
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        sampled = k in eval_steps
        before = [p.detach().clone() for p in hidden] if sampled else []
        orth_before = timer.seconds
        sync()
        t0 = time.perf_counter()
        try:
            for o in opts:
                o.step()
        except USER_ERRORS as exc:
            if opt.family != "plugin":
                raise
            raise BadInput(f"plug-in optimizer {opt.name!r} ({opt.target}) raised {_raised(exc)} "
                           f"in step {k}") from None
        sync()
        step_s.append(time.perf_counter() - t0)
        orth_s.append(timer.seconds - orth_before)
        opt_cum += step_s[-1]
        orth_cum += orth_s[-1]
        batch_losses.append(loss_value)
        if opt.family == "plugin" and not all(bool(torch.isfinite(p).all()) for p in hidden):
            raise BadInput(f"plug-in optimizer {opt.name!r} ({opt.target}) wrote NaN/Inf into the weights "
                           f"in step {k} from finite gradients")
        if sampled:
            align = _alignment(before, hidden, opts[0])
            val_loss = evaluate()
            record(k, val_loss, align)
            if diverging(val_loss):
                diverged_step = k
                break

    diverged = diverged_step >= 0
    if diverged and rows[-1]["step"] != diverged_step:
        batch_losses.clear()
        record(diverged_step, math.nan, no_alignment)
    frame = pd.DataFrame(rows)
    step_ms, orth_ms = 1e3 * np.asarray(step_s), 1e3 * np.asarray(orth_s)

    def quartiles(x: np.ndarray) -> list[float]:
        return [float(v) for v in np.percentile(x, [25, 50, 75])] if x.size else [math.nan] * 3

    summary = {}
    for label, x in (("step_ms", step_ms), ("orth_ms", orth_ms), ("rest_ms", step_ms - orth_ms)):
        if label == "orth_ms" and opt.family in ("adamw", "plugin"):
            x = np.zeros_like(x) if opt.family == "adamw" else np.full_like(x, math.nan)
        q25, q50, q75 = quartiles(x) if not np.isnan(x).all() else [math.nan] * 3
        summary.update({f"{label}_q25": q25, f"{label}_median": q50, f"{label}_q75": q75})
    n_hidden = sum(p.numel() for p in hidden) if opt.family != "adamw" else 0
    frame = frame.assign(
        final_val_loss=math.nan if diverged else float(frame["val_loss"].iloc[-1]),
        diverged=diverged,
        diverged_step=diverged_step,
        **summary,
        family=opt.family,
        ns_steps=opt.ns_steps,
        tile=opt.tile,
        full_first=opt.full_first,
        lr_source="recorded" if opt.name in dict(config.lrs) else "sweep",
        unigram_entropy=_entropy(corpus),
        corpus_sha256=corpus.sha256,
        corpus_bytes=corpus.n_bytes,
        corpus_files=corpus.n_files,
        python_version=platform.python_version(),
        n_params_hidden=n_hidden,
        n_params_other=sum(p.numel() for p in model.parameters()) - n_hidden,
    )
    return frame


# ----------------------------------------------------------------------------- summaries


def split_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(training rows, step-time benchmark per optimizer or None)``.

    The benchmark frame has ``step_ms``, ``step_q25``, ``step_q75``, ``orth_ms`` and
    ``rest_ms`` (medians and quartiles over the interleaved rounds).
    """
    if "benchmark" not in frame.columns or frame["benchmark"].isna().all():
        return frame, None
    bench = frame[frame["benchmark"].notna()]
    step = bench.groupby("optimizer")["bench_step_ms"]
    times = pd.DataFrame({
        "step_ms": step.median(), "step_q25": step.quantile(0.25), "step_q75": step.quantile(0.75),
        "orth_ms": bench.groupby("optimizer")["bench_orth_ms"].median(),
        "rest_ms": (bench["bench_step_ms"] - bench["bench_orth_ms"]).groupby(bench["optimizer"]).median(),
    })
    training = frame[frame["benchmark"].isna()]
    # bool columns read back as object next to the benchmark's empty cells
    return training.astype({"diverged": bool, "full_first": bool}), times


def summarise(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """``(training rows, per-(optimizer, lr) statistics of best_rates, benchmarked?)``; step times
    come from the interleaved benchmark when it ran, else from the training runs."""
    training, times = split_frame(frame)
    stats = best_rates(run_summaries(training))
    if times is not None:
        for col in times.columns:
            stats[col] = stats["optimizer"].map(times[col])
    return training, stats, times is not None


def run_summaries(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run (optimizer, lr, seed, replica) with its per-run columns."""
    cols = ["optimizer", "lr", "seed", "replica", "family", "ns_steps", "tile", "full_first", "final_val_loss",
            "diverged", "diverged_step", "step_ms_median", "step_ms_q25", "step_ms_q75", "orth_ms_median",
            "rest_ms_median", "lr_source"]
    runs = frame.groupby(["optimizer", "lr", "seed", "replica"], sort=True)
    out = runs[[c for c in cols if c not in ("optimizer", "lr", "seed", "replica")]].first().reset_index()
    out["alignment"] = runs["alignment"].mean().to_numpy()
    out["alignment_ns"] = runs["alignment_ns"].mean().to_numpy()
    out["final_opt_s"] = runs["opt_ms_cum"].max().to_numpy() / 1e3
    return out


def best_rates(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (optimizer, lr): mean/std over seeds; ``best`` marks the chosen lr of each optimizer.

    The chosen lr has the lowest mean final loss among the rates where no seed diverged
    (the lowest rate if every rate diverged somewhere).
    """
    g = runs.groupby(["optimizer", "lr"], sort=True)
    stats = g.agg(
        mean=("final_val_loss", "mean"), std=("final_val_loss", "std"), n=("final_val_loss", "size"),
        n_diverged=("diverged", "sum"), step_ms=("step_ms_median", "median"), step_q25=("step_ms_q25", "median"),
        step_q75=("step_ms_q75", "median"), orth_ms=("orth_ms_median", "median"), rest_ms=("rest_ms_median", "median"),
        alignment=("alignment", "mean"), alignment_ns=("alignment_ns", "mean"), opt_s=("final_opt_s", "median"), family=("family", "first"),
        ns_steps=("ns_steps", "first"), tile=("tile", "first"), full_first=("full_first", "first"),
        lr_source=("lr_source", "first"),
    ).reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    stats["best"] = False
    for _, d in stats.groupby("optimizer"):
        ok = d[d["n_diverged"] == 0]
        pick = ok["mean"].idxmin() if len(ok) else d["lr"].idxmin()
        stats.loc[pick, "best"] = True
    return stats


# ----------------------------------------------------------------------------- plot

_FAMILY_COLORS = {
    "adamw": plotting.OKABE_ITO["black"], "muon": plotting.OKABE_ITO["blue"],
    "himuon": plotting.OKABE_ITO["bluish_green"], "muon2": plotting.OKABE_ITO["vermillion"],
    "muon2f": plotting.OKABE_ITO["orange"], "plugin": plotting.OKABE_ITO["reddish_purple"],
}
_FAMILY_LABELS = {"adamw": "AdamW", "muon": "Muon", "himuon": "HiMuon", "muon2": "Muon²", "muon2f": "Muon²-F"}
_NATS = "val. loss (nats/byte)"


def label(opt: Optimizer) -> str:
    if opt.family == "adamw":
        return "AdamW"
    if opt.family == "plugin":
        return f"{opt.name} (plug-in)"
    if opt.family == "himuon":
        return f"HiMuon full→T={opt.tile}" if opt.full_first else f"HiMuon T={opt.tile}"
    return f"{_FAMILY_LABELS[opt.family]} K={opt.ns_steps}"


def style_of(opt: Optimizer, config: Config) -> dict:
    """Colour by family; within a family, K=3 dotted, smaller tiles dashed, full→T dash-dot."""
    linestyle = "-"
    if opt.family in ("muon", "muon2", "muon2f") and opt.ns_steps != config.ns_steps:
        linestyle = ":"
    elif opt.family == "himuon":
        tiles = sorted({o.tile for o in config.parsed() if o.family == "himuon"})
        linestyle = "-." if opt.full_first else ("--" if opt.tile == tiles[0] else (0, (5, 1)))
    color = _FAMILY_COLORS[opt.family]
    if opt.family == "himuon" and not opt.full_first and opt.tile != min(o.tile for o in config.parsed()
                                                                           if o.family == "himuon"):
        color = plotting.OKABE_ITO["sky_blue"]
    return {"color": color, "linestyle": linestyle, "label": label(opt)}


def _best_curves(frame: pd.DataFrame, stats: pd.DataFrame) -> dict[str, pd.DataFrame]:
    best = stats[stats["best"]]
    out = {}
    for _, row in best.iterrows():
        d = frame[(frame["optimizer"] == row["optimizer"]) & np.isclose(frame["lr"], row["lr"])]
        out[row["optimizer"]] = d
    return out


def _band(ax, d: pd.DataFrame, x: str, st: dict) -> None:
    """Mean curve over seeds with a min–max band; a cross where a seed diverged."""
    d = d.dropna(subset=["val_loss"])
    g = d.groupby("step")
    xs = g[x].mean().to_numpy()
    ax.plot(xs, g["val_loss"].mean().to_numpy(), color=st["color"], linestyle=st["linestyle"], linewidth=1.1,
            label=st["label"])
    if g["val_loss"].size().max() > 1:
        ax.fill_between(xs, g["val_loss"].min().to_numpy(), g["val_loss"].max().to_numpy(), color=st["color"],
                        alpha=0.18, linewidth=0)


def _mark_diverged(ax, frame: pd.DataFrame, x: str, st: dict, y: float) -> None:
    div = frame[frame["diverged"].astype(bool)]
    for _, run in div.groupby(["seed", "replica"]):
        ax.plot(run[x].max(), y, marker="x", color=st["color"], markersize=5, clip_on=False, linestyle="none")


def plot(frame: pd.DataFrame, config: Config, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    table = findings(frame, config)
    frame, stats, benchmarked = summarise(frame)
    frame = frame.assign(opt_s_cum=frame["opt_ms_cum"] / 1e3)
    opts = [o for o in config.parsed() if o.name in set(stats["optimizer"])]
    curves = _best_curves(frame, stats)
    entropy = float(frame["unigram_entropy"].iloc[0])
    finite = frame["val_loss"][np.isfinite(frame["val_loss"])]
    top = min(entropy * 1.15, float(finite.max()) * 1.02)
    low = float(finite.min()) * 0.97
    device = str(frame["device"].iloc[0]) if "device" in frame.columns else "cpu"
    note = (f"GPT {config.depth}×{config.width}, ctx {config.context}, batch {config.batch_size}, "
            f"{config.steps} steps, {device}; {frame['corpus_bytes'].iloc[0] / 1e6:.1f} MB corpus")
    stems = []
    with plotting.style():
        # --- lm_loss: vs step, vs optimizer time, step-time split
        fig = plotting.figure("double", 3.2, ncols=3, width_ratios=(1.0, 1.0, 0.9))
        ax_s, ax_t, ax_b = fig.axes
        for opt in opts:
            st = style_of(opt, config)
            d = curves[opt.name]
            for ax, x in ((ax_s, "step"), (ax_t, "opt_s_cum")):
                _band(ax, d, x, st)
                _mark_diverged(ax, d, x, st, top)
        for ax, xl in ((ax_s, "step"), (ax_t, "cumulative optimizer-step time (s)")):
            ax.axhline(entropy, color=plotting.REFERENCE_COLOR, linestyle=":", linewidth=0.8)
            ax.set_ylim(low, top)
            ax.set_xlabel(xl)
            ax.set_ylabel(_NATS)
        ax_s.text(0.02, entropy, f"byte-unigram entropy {entropy:.2f}", transform=ax_s.get_yaxis_transform(),
                  ha="left", va="bottom", fontsize=6.5)
        lines = [f"GPT {config.depth}×{config.width}, ctx {config.context}, batch {config.batch_size}",
                 f"{config.steps} steps, {device}, {frame['corpus_bytes'].iloc[0] / 1e6:.1f} MB corpus"]
        n_seeds = frame.dropna(subset=["replica"]).groupby(["seed", "replica"]).ngroups
        lines += (["band: min–max over seeds"] if n_seeds > 1 else
                  ["one seed (quick run): no seed", "spread, small gaps unresolved"])
        if frame["diverged"].astype(bool).any():
            lines.append("×: diverged")
        # the curves fall steeply near t = 0: the note sits in the empty upper right, above the entropy line
        text = ax_t.text(0.98, 0.98, "\n".join(lines), transform=ax_t.transAxes, ha="right", va="top",
                         fontsize=6, color="0.3")
        text.set_in_layout(False)
        ax_t.set_xlim(0, None)
        best = stats[stats["best"]].set_index("optimizer")
        names = [o.name for o in opts][::-1]
        ypos = np.arange(len(names))
        orth = np.nan_to_num(best.loc[names, "orth_ms"].to_numpy(float))
        total = best.loc[names, "step_ms"].to_numpy(float)
        colors = [style_of(o, config)["color"] for o in opts][::-1]
        ax_b.barh(ypos, orth, color=colors, height=0.65, label="orthogonalisation")
        ax_b.barh(ypos, total - orth, left=orth, color=colors, alpha=0.35, height=0.65, label="rest")
        ax_b.errorbar(total, ypos, xerr=[total - best.loc[names, "step_q25"].to_numpy(float),
                                         best.loc[names, "step_q75"].to_numpy(float) - total],
                      fmt="none", ecolor="0.3", elinewidth=0.6, capsize=1.5)
        by_name = {o.name: o for o in opts}
        ax_b.set_yticks(ypos, [label(by_name[n]) for n in names])
        ax_b.grid(axis="y", visible=False)
        ax_b.set_xlabel("ms per optimizer step\nmedian, IQR" + (" (interleaved)" if benchmarked else "")
                        + "\ndark: orthogonalisation")
        for letter, ax in zip("abc", fig.axes):
            plotting.panel_label(ax, letter)
        fig.legend(*ax_s.get_legend_handles_labels(), loc="outside upper center", ncols=5)
        stems.append(out_dir / "lm_loss")
        plotting.save_figure(fig, stems[-1])

        # --- lm_k: final loss and alignment vs K
        kfams = [f for f in ("muon", "muon2", "muon2f") if (stats[stats["best"]]["family"] == f).any()]
        if kfams:
            fig = plotting.figure("double", 2.5, ncols=2)
            ax_l, ax_a = fig.axes
            for fam in kfams:
                d = stats[stats["best"] & (stats["family"] == fam)].sort_values("ns_steps")
                kw = {"color": _FAMILY_COLORS[fam], "marker": "o", "capsize": 2, "label": _FAMILY_LABELS[fam]}
                ax_l.errorbar(d["ns_steps"], d["mean"], yerr=d["std"], **kw)
                ax_a.plot(d["ns_steps"], d["alignment"], color=kw["color"], marker="o", label=kw["label"])
                if fam != "muon":
                    ax_a.plot(d["ns_steps"], d["alignment_ns"], color=kw["color"], marker="s", linestyle="--",
                              label=f"{kw['label']}: vs polar(M ⊘ (√V+ε))")
            ref = stats[stats["best"] & (stats["family"] == "muon") & (stats["ns_steps"] == config.ns_steps)]
            if len(ref):
                m, s = float(ref["mean"].iloc[0]), float(ref["std"].iloc[0])
                ax_l.axhspan(m - s, m + s, color=_FAMILY_COLORS["muon"], alpha=0.12, linewidth=0)
                ax_l.axhline(m, color=_FAMILY_COLORS["muon"], linewidth=0.6, linestyle="--")
                ax_l.text(0.02, m, f"Muon K={config.ns_steps} ± std", transform=ax_l.get_yaxis_transform(),
                          fontsize=6.5, va="bottom", color=_FAMILY_COLORS["muon"])
            ks = sorted(set(stats["ns_steps"][stats["family"].isin(kfams)].astype(int)))
            for ax in (ax_l, ax_a):
                ax.set_xticks(ks)
                ax.set_xlabel("Newton–Schulz steps K")
            ax_l.set_ylabel("final " + _NATS + "\nmean ± std over seeds")
            ax_a.set_ylabel(r"alignment $\cos(\Delta W, \mathrm{polar}(M))$" + "\nmean over sampled steps")
            ax_a.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            plotting.panel_label(ax_l, "a")
            plotting.panel_label(ax_a, "b")
            stems.append(out_dir / "lm_k")
            plotting.save_figure(fig, stems[-1])

        # --- lm_himuon: final loss and step time vs tile
        him = stats[stats["best"] & (stats["family"] == "himuon")]
        if len(him):
            fig = plotting.figure("double", 2.5, ncols=2)
            ax_l, ax_t2 = fig.axes
            muon = stats[stats["best"] & (stats["family"] == "muon") & (stats["ns_steps"] == config.ns_steps)]
            for full_first, d in him.groupby("full_first"):
                d = d.sort_values("tile")
                name = "full→T" if full_first else "T from step 0"
                kw = {"color": _FAMILY_COLORS["himuon"] if not full_first else plotting.OKABE_ITO["reddish_purple"],
                      "marker": "D" if full_first else "s"}
                ax_l.errorbar(d["tile"], d["mean"], yerr=d["std"], capsize=2, label=f"HiMuon, {name}", **kw)
                ax_t2.plot(d["tile"], d["step_ms"], label=f"HiMuon, {name}", **kw)
            if len(muon):
                m = muon.iloc[0]
                ax_l.axhspan(m["mean"] - m["std"], m["mean"] + m["std"], color=_FAMILY_COLORS["muon"], alpha=0.12,
                             linewidth=0)
                ax_l.axhline(m["mean"], color=_FAMILY_COLORS["muon"], linestyle="--", linewidth=0.8,
                             label=f"Muon K={config.ns_steps} (full matrices) ± std")
                ax_t2.axhline(m["step_ms"], color=_FAMILY_COLORS["muon"], linestyle="--", linewidth=0.8,
                              label=f"Muon K={config.ns_steps}")
            tiles = sorted(set(him["tile"].astype(int)))
            for ax in (ax_l, ax_t2):
                ax.set_xscale("log", base=2)
                ax.set_xticks(tiles, [str(t) for t in tiles])
                ax.minorticks_off()
                ax.set_xlabel(f"tile size T (hidden matrices {config.width}×{config.width}…{4 * config.width})")
            ax_l.set_ylabel("final " + _NATS + "\nmean ± std over seeds")
            ax_t2.set_ylabel("optimizer step, median ms")
            ax_t2.set_ylim(0, None)
            ax_l.legend(fontsize=6.5)
            ax_t2.legend(fontsize=6.5)
            plotting.panel_label(ax_l, "a")
            plotting.panel_label(ax_t2, "b")
            stems.append(out_dir / "lm_himuon")
            plotting.save_figure(fig, stems[-1])

        # --- lm_lr: the sweep (this run's rates, or the recorded sweep for recorded rates)
        fig = plotting.figure("double", 2.8, ncols=2, width_ratios=(1.0, 0.45))
        ax, lax = fig.axes
        sweep = _sweep_table(stats, config)
        ceiling = max(float(np.nanmax(sweep["mean"])) if sweep["mean"].notna().any() else entropy, entropy) * 1.03
        for opt in opts:
            d = sweep[sweep["optimizer"] == opt.name].sort_values("lr")
            if d.empty:
                continue
            st = style_of(opt, config)
            ok = d[d["n_diverged"] == 0]
            ax.errorbar(ok["lr"], ok["mean"], yerr=ok["std"], color=st["color"], linestyle=st["linestyle"],
                        marker="o", markersize=3, capsize=1.5, label=st["label"])
            bad = d[d["n_diverged"] > 0]
            ax.plot(bad["lr"], np.full(len(bad), ceiling), "x", color=st["color"], markersize=5, clip_on=False)
            chosen = d[d["best"]]
            ax.plot(chosen["lr"], chosen["mean"], "o", markersize=6, markerfacecolor="none",
                    markeredgecolor=st["color"])
        ax.set_xscale("log")
        ax.set_ylim(None, ceiling * 1.01)
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final " + _NATS)
        source = sweep["source"].iloc[0] if len(sweep) else ""
        ax.set_title(source, fontsize=7)
        lax.axis("off")
        handles, labels = ax.get_legend_handles_labels()
        lax.legend(handles, labels, loc="upper left", frameon=False, borderaxespad=0.0)
        key = "open circle: chosen rate" + ("\n×: diverged (any seed)" if (sweep["n_diverged"] > 0).any() else "")
        lax.text(0.0, 0.0, key, transform=lax.transAxes, fontsize=6.5, va="bottom", color="0.3")
        stems.append(out_dir / "lm_lr")
        plotting.save_figure(fig, stems[-1])

    (out_dir / "lm.md").write_text(table)
    return stems


def _sweep_table(stats: pd.DataFrame, config: Config) -> pd.DataFrame:
    """This run's (optimizer, lr) statistics, plus the recorded quick sweep for optimizers run at recorded rates."""
    out = stats.assign(source="this run: every rate of lr_grid")
    recorded = dict(config.lrs)
    if recorded and QUICK_SWEEP:
        rows = []
        for (name, lr), loss in QUICK_SWEEP.items():
            if name in recorded:
                rows.append({"optimizer": name, "lr": lr, "mean": np.nan if loss is None else loss, "std": 0.0,
                             "n_diverged": int(loss is None), "best": np.isclose(lr, recorded[name])})
        keep = out[~out["optimizer"].isin(recorded)]
        out = pd.concat([keep, pd.DataFrame(rows)], ignore_index=True)
        out["source"] = f"sweep recorded beforehand (the quick model, first seed; corpus {QUICK_SWEEP_CORPUS[:12]})"
    return out


# ----------------------------------------------------------------------------- findings


def compare(stats: pd.DataFrame, a: str, b: str, tol: float) -> dict | None:
    """``a`` against ``b`` at their chosen rates: difference of mean final losses, its standard
    error ``√(s_a²/n_a + s_b²/n_b)`` and a verdict.

    ``a`` is *better* (*worse*) when its mean is lower (higher) by more than both twice the
    standard error and ``tol`` nats/byte; otherwise the two are *indistinguishable* here.
    ``None`` when either is missing or diverged at every rate.
    """
    best = stats[stats["best"]].set_index("optimizer")
    if a not in best.index or b not in best.index:
        return None
    ra, rb = best.loc[a], best.loc[b]
    if not (np.isfinite(ra["mean"]) and np.isfinite(rb["mean"])):
        return None
    diff = float(ra["mean"] - rb["mean"])
    # one seed has no spread: the standard error is unknown and only |Δ| > tol can count
    spread = ra["n"] >= 2 and rb["n"] >= 2
    se = math.sqrt(ra["std"] ** 2 / ra["n"] + rb["std"] ** 2 / rb["n"]) if spread else math.nan
    margin = max(2 * se, tol) if spread else tol
    if diff < -margin:
        verdict = "better"
    elif diff > margin:
        verdict = "worse"
    else:
        verdict = "indistinguishable"
    return {"diff": diff, "se": se, "verdict": verdict, "time_ratio": float(ra["step_ms"] / rb["step_ms"]),
            "orth_ratio": float(ra["orth_ms"] / rb["orth_ms"]) if rb["orth_ms"] > 0 else math.nan}


def findings(frame: pd.DataFrame, config: Config) -> str:
    """The markdown table (per optimizer at its chosen rate) and a verdict on each claim."""
    frame, stats, benchmarked = summarise(frame)
    best = stats[stats["best"]].set_index("optimizer")
    opts = [o for o in config.parsed() if o.name in best.index]
    tol = config.match_tol
    device = str(frame["device"].iloc[0]) if "device" in frame.columns else "cpu"
    ref = f"muon_k{config.ns_steps}"
    lines = [
        "# lm: byte-level GPT, final validation loss (nats/byte)",
        "",
        f"GPT {config.depth} layers × {config.width} wide, context {config.context}, batch {config.batch_size}, "
        f"{config.steps} steps ({config.steps * config.batch_size * config.context / 1e6:.2f} M tokens), "
        f"{config.positions} positions, device {device}; corpus `{config.corpus or 'stdlib'}` "
        f"({int(frame['corpus_files'].iloc[0])} files, {int(frame['corpus_bytes'].iloc[0]):,} bytes, "
        f"sha256 `{frame['corpus_sha256'].iloc[0][:16]}…`, Python {frame['python_version'].iloc[0]}); "
        f"byte-unigram entropy **{float(frame['unigram_entropy'].iloc[0]):.3f}** nats/byte. "
        f"Seeds per optimizer: {len(config.seeds)} (× store seeds {sorted(set(frame['seed'].astype(int)))}). "
        f"Warm-up {config.warmup_frac:.0%} of the steps (linear), then cosine decay; weight decay "
        f"{config.weight_decay:g}.",
        "",
        f"| optimizer | lr (source) | final val loss, mean ± std (n) | Δ vs Muon K={config.ns_steps} | "
        "step ms, median [IQR] | orth. ms | rest ms | alignment (NS input) | diverged runs (all rates) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref_mean = float(best.loc[ref, "mean"]) if ref in best.index else math.nan
    for o in opts:
        r = best.loc[o.name]
        n_div = int(stats[stats["optimizer"] == o.name]["n_diverged"].sum())
        n_runs = int(stats[stats["optimizer"] == o.name]["n"].sum())
        spread = f" ± {r['std']:.4f}" if r["n"] >= 2 else ""
        loss = f"{r['mean']:.4f}{spread} ({int(r['n'])})" if np.isfinite(r["mean"]) else "diverged"
        align = f"{r['alignment']:.3f}" + (f" ({r['alignment_ns']:.3f})" if np.isfinite(r["alignment_ns"]) else "")
        lines.append(
            f"| {label(o)} | {r['lr']:g} ({r['lr_source']}) | {loss} | {r['mean'] - ref_mean:+.4f} | "
            f"{r['step_ms']:.2f} [{r['step_q25']:.2f}, {r['step_q75']:.2f}] | {r['orth_ms']:.2f} | {r['rest_ms']:.2f} | "
            f"{align} | {n_div}/{n_runs} |"
        )
    lines += ["", f"Differences Δ = first − second in final validation loss (nats/byte) ± its standard error; "
                  f"*better*/*worse*: |Δ| exceeds both 2 SE and {tol:g} nats/byte, else *indistinguishable* "
                  "at this size. Step ratios are of median optimizer-step times"
                  + (f", measured on the same gradients with the optimizers interleaved ({config.timing_rounds} rounds)"
                     if benchmarked else ", from the training runs (not interleaved)") + ".", ""]

    def claim(title: str, a: str, b: str, holds: Callable[[dict], bool], rule: str) -> None:
        c = compare(stats, a, b, tol)
        if c is None:
            lines.append(f"- **{title}**: not measured ({a} or {b} missing or diverged at every rate).")
            return
        verdict = "holds" if holds(c) else "does not hold"
        delta = (f"Δ = {c['diff']:+.4f} ± {c['se']:.4f}" if math.isfinite(c["se"]) else
                 f"Δ = {c['diff']:+.4f} (one seed: no standard error, only |Δ| > {tol:g} counts)")
        orth = f", orthogonalisation {c['orth_ratio']:.2f}×" if math.isfinite(c["orth_ratio"]) else ""
        lines.append(
            f"- **{title}** → **{verdict}** here ({rule}). {label(parse_optimizer(a))} vs "
            f"{label(parse_optimizer(b))}: {delta}, loss {c['verdict']}; "
            f"optimizer step {c['time_ratio']:.2f}×{orth}."
        )

    def not_worse(c: dict) -> bool:
        return c["verdict"] != "worse"

    names = set(best.index)
    for o in opts:
        if o.family == "himuon":
            claim(f"{label(o)} keeps training close to Muon K={config.ns_steps} while the step gets cheaper", o.name,
                  ref, lambda c: not_worse(c) and c["time_ratio"] < 1, "loss not worse and step-time ratio < 1")
    for fam in ("muon2", "muon2f"):
        k5, k3 = f"{fam}_k{config.ns_steps}", f"{fam}_k3"
        if k5 in names:
            claim(f"{_FAMILY_LABELS[fam]} outperforms Muon (K={config.ns_steps} both)", k5, ref,
                  lambda c: c["verdict"] == "better", "loss better")
        if k3 in names:
            claim(f"{_FAMILY_LABELS[fam]} at K=3 matches Muon at K={config.ns_steps} (40% fewer NS steps)", k3, ref,
                  not_worse, "loss not worse")
    if "muon_k3" in names:
        claim(f"Control: plain Muon at K=3 matches K={config.ns_steps}", "muon_k3", ref, not_worse,
              "loss not worse; if it holds, K=3 suffices without preconditioning, so Muon² K=3 matching Muon "
              "K=5 says nothing about preconditioning")
    if "adamw" in names:
        claim("Sanity: Muon beats AdamW", ref, "adamw", lambda c: c["verdict"] == "better", "loss better")
    return "\n".join(lines) + "\n"
