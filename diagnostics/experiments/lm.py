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
from typing import Any

import pandas as pd

from ..corpus import load_corpus
from ..gpt import GPT, GPTConfig
from ..threads import torch_threads
from .lm_findings import best_rates, compare, findings, run_summaries, split_frame, summarise
from .lm_optimizers import (
    DEFAULT_OPTIMIZERS,
    QUICK_LRS,
    QUICK_OPTIMIZERS,
    QUICK_RUN_OPTIMIZERS,
    QUICK_SWEEP,
    QUICK_SWEEP_CORPUS,
    Optimizer,
    _source_hash,
    check_coverage,
    load_factory,
    make_optimizers,
    parse_optimizer,
    split_model,
)
from .lm_plot import plot
from .lm_train import _benchmark, _train

#: the experiment protocol (NAME … plot) and the pieces other code and the tests use, from
#: :mod:`.lm_optimizers`, :mod:`.lm_train`, :mod:`.lm_findings` and :mod:`.lm_plot`
__all__ = [
    "DEFAULT_OPTIMIZERS",
    "DESCRIPTION",
    "GPT",
    "NAME",
    "PLUGIN_OPTIMIZERS",
    "QUICK_LRS",
    "QUICK_OPTIMIZERS",
    "QUICK_RUN_OPTIMIZERS",
    "QUICK_SWEEP",
    "QUICK_SWEEP_CORPUS",
    "Config",
    "GPTConfig",
    "Optimizer",
    "best_rates",
    "cells",
    "check_coverage",
    "compare",
    "findings",
    "load_factory",
    "make_optimizers",
    "parse_optimizer",
    "plot",
    "run_cell",
    "run_summaries",
    "split_frame",
    "split_model",
    "summarise",
]

NAME = "lm"
#: The command line may add plug-in optimizers (``--optimizer NAME=MODULE:FACTORY``).
PLUGIN_OPTIMIZERS = True
DESCRIPTION = "byte-level GPT on the stdlib: AdamW vs Muon, HiMuon, Muon2/Muon2-F (K=5, K=3), lr sweep, seeds"


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
    def full(cls) -> Config:
        return cls()

    @classmethod
    def quick(cls) -> Config:
        """The CPU-sized bench: the optimizers of :data:`QUICK_RUN_OPTIMIZERS` at their recorded
        rates :data:`QUICK_LRS`, one seed (plug-ins swept over three rates)."""
        rates = tuple((name, lr) for name, lr in QUICK_LRS if name in QUICK_RUN_OPTIMIZERS)
        return cls.quick_sweep(optimizers=QUICK_RUN_OPTIMIZERS, lrs=rates, lr_grid=(3e-3, 1e-2, 3e-2), seeds=(0,))

    @classmethod
    def quick_sweep(cls, **overrides: Any) -> Config:
        """The quick model swept over the whole grid on one seed (how :data:`QUICK_LRS` was found)."""
        base: dict[str, Any] = {
            "context": 64,
            "width": 64,
            "depth": 2,
            "heads": 4,
            "batch_size": 16,
            "steps": 300,
            "eval_every": 25,
            "val_windows": 64,
            "optimizers": QUICK_OPTIMIZERS,
            "lr_grid": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
            "seeds": (0,),
            "timing_rounds": 20,
        }
        base.update(overrides)
        return cls(**base)

    def parsed(self) -> list[Optimizer]:
        return [parse_optimizer(o, self.ns_steps) for o in self.optimizers]

    def gpt(self) -> GPTConfig:
        return GPTConfig(self.context, self.width, self.depth, self.heads, 4, self.positions)


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
                out.append(
                    {"optimizer": opt.name, "lr": float(lr), "replica": int(replica), **extra, "corpus_sha256": digest}
                )
    if config.timing_rounds:
        out.append({"benchmark": "optimizer_step", "plugin_source": ",".join(sources), "corpus_sha256": digest})
    return out


def run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    with torch_threads(config.cpu_threads or None):
        if "benchmark" in cell:
            return _benchmark(config, device, seed, cell)
        return _train(config, cell, device, seed)
