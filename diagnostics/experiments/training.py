"""A small training comparison: AdamW, Muon, HiMuon (two tile sizes), Muon² and Muon²-F.

Task
    Teacher–student regression on synthetic data.  Inputs ``x ∈ R^d`` have a
    power-law covariance (eigenvalues ``λ_i ∝ i^(−input_alpha)`` in a random
    orthonormal basis, trace ``d``); the targets are the outputs of a random
    one-hidden-layer tanh *teacher* network, scaled to unit variance per output.
    The *student* is a GELU MLP ``d → hidden… → out``; the loss is the mean squared
    error (so a predictor outputting 0 scores about 1).  A fixed training set is
    visited in seeded random order (one permutation per epoch); a held-out set
    of ``n_eval`` samples gives the eval loss.

Fairness and seeds
    The data, the data order and the student's initial weights depend only on the
    run's seed and the replicate index (:func:`diagnostics.store.cell_seed` of the
    seed, a fixed tag and ``replicate``; *not* of the optimizer or lr), so within a
    replicate every optimizer starts from the same weights and sees the same
    batches.  Each configuration runs ``n_seeds`` independent replicates (other
    data, weights and batch order); the figure shows their mean and min–max band,
    and ratios to Muon are paired (same replicate).  Frames of several ``--seed``
    runs combined count as further replicates.

Parameter split (standard practice, e.g. modded-nanogpt and torch.optim.Muon's
docs)
    The hidden 2-D weight matrices — every ``Linear`` weight except the read-out
    (output) layer — go to the matrix optimizer; the read-out weight, all biases
    (vectors) go to ``torch.optim.AdamW``.  There is no embedding in an MLP; the
    first layer is a dense ``hidden × d`` matrix and is treated as hidden
    (``head_to_adamw=False`` sends the read-out matrix to the matrix optimizer too).
    The AdamW baseline optimises everything with AdamW.

Learning rates
    Every optimizer gets its own lr from a sweep recorded in the same run: each
    one trains at every lr of ``lrs`` and every replicate, and the figure uses,
    per optimizer, the lr with the lowest final eval loss averaged over the
    replicates (:func:`best_lrs`; panel (c) shows the sweep, the legend the chosen
    lr, marked "grid edge" when the optimum may lie outside the grid).  Quick grid
    ``{5e-3, 1e-2, 2e-2}``: in a wider ``{1e-3, 3e-3, 1e-2, 3e-2, 1e-1}`` sweep
    (quick config, seed 0) every optimizer's best lr was 1e-2, with 3e-3 and 3e-2
    clearly worse.  Every matrix optimizer uses ``adjust_lr_fn="match_rms_adamw"``
    (update RMS ``0.2`` per entry, for HiMuon per tile: ``lr·0.2·√max(Th, Tw)``),
    which puts their lrs on AdamW's scale; the AdamW part of a Muon-family run
    (biases, read-out) uses the run's lr.  Schedule: linear warm-up over
    ``warmup_frac`` of the steps, then cosine decay to 0.  Momentum 0.95 (Nesterov)
    for the Muon family, AdamW betas ``(0.9, 0.95)``; no weight decay (a short
    noiseless regression run); Newton–Schulz: Jordan's quintic, 5 steps, float32
    on CPU (bfloat16 on CUDA, the optimizers' default).

Cells
    One per (optimizer, lr, replicate): an interrupted sweep resumes per run.

Rows
    One per (optimizer, step) for ``step = 0 … steps``: ``train_loss`` (the loss of
    the mini-batch that step ``k`` back-propagates, i.e. of the model after
    ``k − 1`` updates; NaN at step 0), ``eval_loss`` (held-out loss of the model
    after ``k`` updates, every ``eval_every`` steps, at 0 and at the last step;
    NaN elsewhere), ``step_ms`` (time of the optimizer step(s) of update ``k`` —
    matrix optimizer and AdamW — on the clock :func:`diagnostics.timing.pick_clock`
    names in column ``clock``: the thread's CPU time for single-threaded CPU runs, else wall time,
    CUDA-synchronised on a GPU; NaN at step 0), and the per-run summaries
    ``step_ms_median``, ``step_ms_iqr``, ``final_eval_loss``, ``final_train_loss``
    (mean mini-batch loss over the last 10% of the steps), plus ``family``,
    ``tile`` (0: no tiling) and ``n_params_matrix``/``n_params_adamw``.

Figure ``training``
    Each optimizer at its best lr, with its own colour, dash pattern and marker
    (markers staggered so that coinciding curves stay visible); the legend gives
    the lr.  (a) training loss (mini-batch MSE, centred moving average) against
    step, log y, mean over replicates with a min–max band; (b) eval loss relative to
    Muon's (same replicate) against step, log y: the HiMuon vs Muon question read
    off directly; (c) the lr sweep: final eval loss against lr (mean, min–max over
    replicates), the chosen lr circled; (d) optimizer-step time on a log axis
    (median and interquartile range over every step of every run of the
    optimizer), labelled with the final eval loss relative to Muon's.

Finding (quick run: CPU, 150 steps, 64→128→128→10, batch 128, lr grid {1e-2, 2e-2, 4e-2}, 2 seeds)
    Best lr 1e-2 (AdamW, HiMuon T = 32) or 2e-2 (the others), both inside the grid.
    Paired final eval loss relative to Muon: AdamW 1.01–1.02×, HiMuon T = 32 1.02×,
    T = 64 1.00×, Muon² 1.00–1.03×, Muon²-F 1.01×.  At this size only gaps of a few per
    cent are resolved: the ordering (smaller tiles lose more) shows, the size of the
    AdamW–Muon gap does not.  The earlier quick size (256-wide, 300 steps, 2 seeds; 4×
    the CPU time) measured AdamW 1.16–1.17×, HiMuon T = 32 1.10–1.11×, T = 64 1.06–1.07×,
    Muon² 0.98×, Muon²-F 1.00×.  Median optimizer-step time (one thread's CPU time):
    AdamW 0.5 ms, HiMuon 2.5–3.1 ms, Muon 3.1 ms, Muon² 4.1 ms, Muon²-F 4.6 ms.

Timing
    On CPU ``run_cell`` sets ``torch.set_num_threads(cpu_threads)`` (default 1,
    restored afterwards): on a machine shared with other jobs, multi-threaded
    matmuls stall unpredictably (in development Muon's step time jumped between
    7 and 85 ms with 2 threads), whereas single-threaded times are stable.
    Set ``cpu_threads=0`` to keep torch's setting.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator
from torch import nn

import matfun.optim

from .. import plotting, timing
from ..store import cell_seed
from ..threads import torch_threads

NAME = "training"
DESCRIPTION = "teacher-student MLP regression trained with AdamW, Muon, HiMuon (two tiles), Muon2 and Muon2-F"

#: Optimizer families, in plotting order.
FAMILIES = ("adamw", "muon", "himuon", "muon2", "muon2_f")

_COLORS = {
    "adamw": plotting.OKABE_ITO["black"],
    "muon": plotting.OKABE_ITO["blue"],
    "muon2": plotting.OKABE_ITO["vermillion"],
    "muon2_f": plotting.OKABE_ITO["orange"],
}
# HiMuon tiles: smallest tile first.
_HIMUON_COLORS = [
    plotting.OKABE_ITO["bluish_green"],
    plotting.OKABE_ITO["sky_blue"],
    plotting.OKABE_ITO["reddish_purple"],
]
_LABELS = {"adamw": "AdamW", "muon": "Muon", "muon2": "Muon²", "muon2_f": "Muon²-F"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Model, data, budget and optimizer choices (defaults: the full run)."""

    input_dim: int = 64
    hidden: tuple[int, ...] = (512, 512, 512)
    output_dim: int = 10
    teacher_hidden: int = 256
    input_alpha: float = 1.0
    n_train: int = 131072
    n_eval: int = 4096
    batch_size: int = 256
    steps: int = 1500
    eval_every: int = 50
    lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    n_seeds: int = 3
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    momentum: float = 0.95
    ns_steps: int = 5
    himuon_tiles: tuple[int, ...] = (64, 128)
    head_to_adamw: bool = True
    optimizers: tuple[str, ...] = FAMILIES
    cpu_threads: int = 1

    def __post_init__(self) -> None:
        unknown = [o for o in self.optimizers if o not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown optimizer(s) {unknown}; valid: {FAMILIES}")
        if "himuon" in self.optimizers and not self.himuon_tiles:
            raise ValueError("himuon needs at least one tile size in himuon_tiles")
        if any(t < 1 for t in self.himuon_tiles) or len(set(self.himuon_tiles)) != len(self.himuon_tiles):
            raise ValueError(f"himuon_tiles must be distinct positive ints, got {self.himuon_tiles}")
        if not self.lrs or any(lr <= 0 for lr in self.lrs) or len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"lrs must be distinct and positive, got {self.lrs}")
        if self.n_seeds < 1:
            raise ValueError(f"n_seeds must be >= 1, got {self.n_seeds}")
        if not self.hidden:
            raise ValueError("need at least one hidden layer")
        if self.steps < 2 or self.eval_every < 1 or self.batch_size < 1 or self.batch_size > self.n_train:
            raise ValueError("need steps >= 2, eval_every >= 1 and 1 <= batch_size <= n_train")
        if self.cpu_threads < 0:
            raise ValueError("cpu_threads must be >= 0 (0: leave torch's setting)")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError("warmup_frac must lie in [0, 1)")

    @classmethod
    def quick(cls) -> Config:
        # lr grid: in a {5e-3, 1e-2, 2e-2} sweep of this config (2 seeds) most optimizers' best lr was the
        # edge 2e-2 (5e-3 clearly worse), so the quick grid is the factor-2 grid {1e-2, 2e-2, 4e-2}.
        # 128-wide and 150 steps keep the quick run near 30 CPU-seconds (256-wide, 300 steps took
        # 110-130 s, most of it in Muon's 256×256 Newton–Schulz).
        return cls(
            hidden=(128, 128),
            teacher_hidden=128,
            n_train=65536,
            n_eval=2048,
            batch_size=128,
            steps=150,
            eval_every=25,
            lrs=(1e-2, 2e-2, 4e-2),
            n_seeds=2,
            himuon_tiles=(32, 64),
        )


def _run_name(family: str, tile: int = 0) -> str:
    return f"himuon_t{tile}" if family == "himuon" else family


def cells(config: Config) -> list[dict]:
    out = []
    for family in config.optimizers:
        tiles = config.himuon_tiles if family == "himuon" else (0,)
        for tile in tiles:
            for lr in config.lrs:
                for replicate in range(config.n_seeds):
                    out.append({"optimizer": _run_name(family, tile), "lr": float(lr), "replicate": replicate})
    return out


def _parse(name: str) -> tuple[str, int]:
    if name.startswith("himuon_t"):
        return "himuon", int(name[len("himuon_t") :])
    if name not in FAMILIES:
        raise ValueError(f"unknown optimizer {name!r}")
    return name, 0


# ----------------------------------------------------------------------- data, model


def make_data(config: Config, seed: int) -> dict[str, torch.Tensor]:
    """Power-law inputs and random-teacher targets (float32, CPU), from ``seed`` only.

    Every cell of a replicate uses the same data: the last two data sets are kept
    (read-only by convention) so a sweep draws each once."""
    fields = ("input_dim", "output_dim", "teacher_hidden", "input_alpha", "n_train", "n_eval")
    return _data(tuple(getattr(config, f) for f in fields), seed)


@functools.lru_cache(maxsize=2)
def _data(fields: tuple, seed: int) -> dict[str, torch.Tensor]:
    d, output_dim, teacher_hidden, input_alpha, n_train, n_eval = fields
    config = Config(
        input_dim=d,
        output_dim=output_dim,
        teacher_hidden=teacher_hidden,
        input_alpha=input_alpha,
        n_train=n_train,
        n_eval=n_eval,
        batch_size=min(256, n_train),
    )
    g = torch.Generator().manual_seed(seed)
    d = config.input_dim
    lam = torch.arange(1, d + 1, dtype=torch.float64) ** (-config.input_alpha)
    lam = lam * (d / lam.sum())
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    mix = torch.sqrt(lam)[:, None] * basis.T  # x = z · mix, Cov(x) = basis diag(λ) basisᵀ
    w1 = torch.randn(d, config.teacher_hidden, generator=g, dtype=torch.float64) / math.sqrt(d)
    b1 = 0.1 * torch.randn(config.teacher_hidden, generator=g, dtype=torch.float64)
    w2 = torch.randn(config.teacher_hidden, config.output_dim, generator=g, dtype=torch.float64)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
        return x, torch.tanh(x @ w1 + b1) @ w2

    x_train, y_train = sample(config.n_train)
    x_eval, y_eval = sample(config.n_eval)
    mean, std = y_train.mean(0), y_train.std(0)
    return {
        "x_train": x_train.float(),
        "y_train": ((y_train - mean) / std).float(),
        "x_eval": x_eval.float(),
        "y_eval": ((y_eval - mean) / std).float(),
    }


def make_model(config: Config, seed: int) -> nn.Sequential:
    """The student MLP with PyTorch's default init drawn from ``seed`` (CPU)."""
    widths = (config.input_dim, *config.hidden)
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(widths[-1], config.output_dim))
    return nn.Sequential(*layers)


def split_params(model: nn.Sequential, head_to_adamw: bool) -> tuple[list, list]:
    """``(matrix, adamw)``: hidden 2-D weights vs. biases (and the read-out weight), by
    :func:`matfun.optim.split_params`."""
    hidden, rest = matfun.optim.split_params(model, head="last" if head_to_adamw else None)
    return [p for _, p in hidden], [p for _, p in rest]


def make_optimizers(config: Config, name: str, lr: float, model: nn.Sequential) -> list[torch.optim.Optimizer]:
    family, tile = _parse(name)
    adamw_kw: dict[str, Any] = {"lr": lr, "betas": (0.9, 0.95), "weight_decay": config.weight_decay}
    if family == "adamw":
        return [torch.optim.AdamW(model.parameters(), **adamw_kw)]
    matrix, other = split_params(model, config.head_to_adamw)
    common: dict[str, Any] = {
        "lr": lr,
        "weight_decay": config.weight_decay,
        "momentum": config.momentum,
        "ns_steps": config.ns_steps,
        "adjust_lr_fn": "match_rms_adamw",
    }
    main: torch.optim.Optimizer
    if family == "muon":
        main = matfun.optim.Muon(matrix, **common)
    elif family == "himuon":
        main = matfun.optim.HiMuon(matrix, tile=tile, **common)
    else:
        main = matfun.optim.Muon2(matrix, factorized=(family == "muon2_f"), **common)
    return [main, torch.optim.AdamW(other, **adamw_kw)]


def lr_factor(config: Config, step: int) -> float:
    """Linear warm-up then cosine decay to 0; ``step`` is the 1-based update index."""
    warm = max(round(config.warmup_frac * config.steps), 0)
    if warm and step <= warm:
        return step / warm
    progress = (step - warm) / max(config.steps - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


# ----------------------------------------------------------------------------- run


def run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    with torch_threads(config.cpu_threads or None):
        return _train(config, cell, device, seed)


def _train(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    name, lr, replicate = cell["optimizer"], float(cell["lr"]), int(cell.get("replicate", 0))
    family, tile = _parse(name)
    # Shared by all cells of a replicate: same data, data order and initial weights for every optimizer and lr.
    data_seed = cell_seed(seed, {"training": "data", "replicate": replicate})
    init_seed = cell_seed(seed, {"training": "init", "replicate": replicate})
    order_seed = cell_seed(seed, {"training": "order", "replicate": replicate})
    data = {k: v.to(device) for k, v in make_data(config, data_seed).items()}
    model = make_model(config, init_seed).to(device)
    opts = make_optimizers(config, name, lr, model)
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    cuda = torch.device(device).type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    clock, read_clock = timing.pick_clock(device, config.cpu_threads)
    order = torch.Generator().manual_seed(order_seed)
    loss_fn = nn.MSELoss()

    @torch.no_grad()
    def evaluate() -> float:
        return float(loss_fn(model(data["x_eval"]), data["y_eval"]))

    n, bs = config.n_train, config.batch_size
    perm, pos = torch.randperm(n, generator=order), 0
    train_loss = np.full(config.steps + 1, np.nan)
    eval_loss = np.full(config.steps + 1, np.nan)
    step_ms = np.full(config.steps + 1, np.nan)
    eval_loss[0] = evaluate()
    for k in range(1, config.steps + 1):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=order), 0
        idx = perm[pos : pos + bs].to(device)
        pos += bs
        factor = lr_factor(config, k)
        for o, lrs in zip(opts, base_lrs):
            for g, base in zip(o.param_groups, lrs):
                g["lr"] = base * factor
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss = loss_fn(model(data["x_train"][idx]), data["y_train"][idx])
        loss.backward()
        sync()
        t0 = read_clock()
        for o in opts:
            o.step()
        sync()
        step_ms[k] = 1e3 * (read_clock() - t0)
        train_loss[k] = float(loss.detach())
        if k % config.eval_every == 0 or k == config.steps:
            eval_loss[k] = evaluate()

    times = step_ms[1:]
    q25, q50, q75 = np.percentile(times, [25, 50, 75])
    tail = max(1, config.steps // 10)
    matrix, other = split_params(model, config.head_to_adamw) if family != "adamw" else ([], list(model.parameters()))
    return pd.DataFrame(
        {
            "step": np.arange(config.steps + 1),
            "train_loss": train_loss,
            "eval_loss": eval_loss,
            "step_ms": step_ms,
            "step_ms_median": q50,
            "step_ms_iqr": q75 - q25,
            "final_eval_loss": eval_loss[-1],
            "final_train_loss": float(np.mean(train_loss[-tail:])),
            "family": family,
            "tile": tile,
            "n_params_matrix": sum(p.numel() for p in matrix),
            "n_params_adamw": sum(p.numel() for p in other),
            "clock": clock,
        }
    )


# ---------------------------------------------------------------------------- plot


def run_names(config: Config) -> list[str]:
    """Optimizer run names in plotting order (HiMuon tiles ascending)."""
    out = []
    for family in config.optimizers:
        if family == "himuon":
            out += [_run_name("himuon", t) for t in sorted(config.himuon_tiles)]
        else:
            out.append(family)
    return out


# Per run: a dash pattern and a marker besides the colour, so that curves lying on top of each
# other (Muon, Muon², Muon²-F) stay visible; markers are staggered along the x axis.
_STYLES: dict[str, dict[str, Any]] = {
    "adamw": {"linestyle": "-", "marker": "o"},
    "muon": {"linestyle": "-", "marker": "s"},
    "muon2": {"linestyle": (0, (5, 2)), "marker": "^"},
    "muon2_f": {"linestyle": (0, (1, 1.5)), "marker": "v"},
}
_HIMUON_STYLES: list[dict[str, Any]] = [
    {"linestyle": (0, (6, 2, 1.5, 2)), "marker": "D"},
    {"linestyle": (0, (3, 1.5)), "marker": "P"},
    {"linestyle": (0, (1, 1, 4, 1)), "marker": "X"},
]


def optimizer_style(name: str, config: Config) -> dict:
    """Colour, label, line style and marker of one optimizer run (consistent across panels)."""
    family, tile = _parse(name)
    if family == "himuon":
        i = sorted(config.himuon_tiles).index(tile) if tile in config.himuon_tiles else 0
        return {
            "color": _HIMUON_COLORS[i % len(_HIMUON_COLORS)],
            "label": f"HiMuon T = {tile}",
            **_HIMUON_STYLES[i % len(_HIMUON_STYLES)],
        }
    return {"color": _COLORS[family], "label": _LABELS[family], **_STYLES[family]}


def _replicate_ids(frame: pd.DataFrame) -> pd.Series:
    """One id per independent replicate: the run's seed and the replicate index (several
    ``--seed`` runs concatenated into one frame count as further replicates)."""
    seed = frame["seed"].astype(str) if "seed" in frame.columns else "0"
    rep = frame["replicate"].astype(str) if "replicate" in frame.columns else "0"
    return seed + "/" + rep


def final_losses(frame: pd.DataFrame) -> pd.DataFrame:
    """Final eval loss per (optimizer, lr, replicate): one row per run."""
    f = frame.assign(rep_id=_replicate_ids(frame))
    return f.groupby(["optimizer", "lr", "rep_id"], sort=True)["final_eval_loss"].first().reset_index()


def best_lrs(frame: pd.DataFrame) -> dict[str, float]:
    """Per optimizer, the lr of the sweep with the lowest final eval loss averaged over replicates
    (ties: the smaller lr)."""
    mean = final_losses(frame).groupby(["optimizer", "lr"])["final_eval_loss"].mean().reset_index()
    mean = mean.sort_values(["optimizer", "final_eval_loss", "lr"]).drop_duplicates("optimizer")
    return {str(o): float(lr) for o, lr in zip(mean["optimizer"], mean["lr"])}


def best_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each optimizer's best lr (:func:`best_lrs`), every replicate."""
    best = best_lrs(frame)
    return frame[[best.get(o) == lr for o, lr in zip(frame["optimizer"], frame["lr"])]]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average (shrinking at the ends): no lag, unlike an EMA."""
    return pd.Series(values).rolling(window, center=True, min_periods=1).mean().to_numpy()


def _curves(d: pd.DataFrame, column: str, transform=None) -> pd.DataFrame:
    """Step × replicate table of ``column`` (rows with a value only), optionally transformed per replicate."""
    d = d.dropna(subset=[column])
    d = d.assign(rep_id=_replicate_ids(d))
    table = d.pivot_table(index="step", columns="rep_id", values=column, aggfunc="first").sort_index()
    return table.apply(transform) if transform is not None else table


def _lr_text(lr: float) -> str:
    """Compact lr: ``0.005`` → ``5e-3``, ``0.0025`` → ``2.5e-3``."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _fit_labels(fig, ax, labels) -> None:
    """Widen ``ax``'s log x-axis on the right until every ``(text, x)`` label ends inside the axes."""
    fig.draw_without_rendering()  # lay the figure out, so the axes and text extents are final
    width = ax.get_window_extent().width
    lo, hi = np.log10(ax.get_xlim())
    need = hi
    for text, x in labels:
        share = min(text.get_window_extent().width / width + 0.03, 0.9)  # of the axes' width, with a margin
        need = max(need, (np.log10(x) - share * lo) / (1 - share))
    ax.set_xlim(10.0**lo, 10.0**need)


def plot(frame: pd.DataFrame, config: Config, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    lrs = best_lrs(frame)
    best = best_runs(frame)
    names = [n for n in run_names(config) if n in lrs]
    ref = "muon" if "muon" in lrs else names[0]
    ref_label = optimizer_style(ref, config)["label"]
    n_reps = int(_replicate_ids(frame).nunique())
    grid = sorted({float(v) for v in frame["lr"]})
    window = max(1, round(config.steps / 30))  # ~3% of the run
    ref_eval = _curves(best[best["optimizer"] == ref], "eval_loss")
    finals = final_losses(best).pivot_table(index="rep_id", columns="optimizer", values="final_eval_loss")
    ratio = finals.div(finals[ref], axis=0)  # paired: same replicate, same data and initial weights

    with plotting.style():
        fig = plotting.figure("double", 5.0, nrows=2, ncols=2)
        ax_tr, ax_ev, ax_lr, ax_t = fig.axes
        handles = []
        for i, name in enumerate(names):
            st = optimizer_style(name, config)
            line = {"color": st["color"], "linestyle": st["linestyle"], "linewidth": 1.2}
            d = best[best["optimizer"] == name]
            edge = len(grid) > 1 and lrs[name] in (grid[0], grid[-1])
            label = f"{st['label']}, lr {_lr_text(lrs[name])}" + (" (grid edge)" if edge else "")
            handles.append(Line2D([], [], marker=st["marker"], markersize=3.5, label=label, **line))

            # (a) training loss: moving average per replicate; mean line, band = min–max over replicates.
            tr = _curves(d[d["step"] > 0], "train_loss", lambda c: pd.Series(_smooth(c.to_numpy(), window), c.index))
            ax_tr.fill_between(tr.index, tr.min(axis=1), tr.max(axis=1), color=st["color"], alpha=0.15, linewidth=0)
            every = max(1, config.steps // 8)
            ax_tr.plot(
                tr.index,
                tr.mean(axis=1),
                marker=st["marker"],
                markersize=3,
                markevery=(1 + (i * every) // max(len(names), 1), every),
                **line,
            )

            # (b) eval loss relative to the reference optimizer, paired per replicate.
            ev = _curves(d, "eval_loss")
            steps = ev.index.intersection(ref_eval.index)
            rel = (ev.loc[steps] / ref_eval.loc[steps, ev.columns])[steps > 0]
            ax_ev.fill_between(rel.index, rel.min(axis=1), rel.max(axis=1), color=st["color"], alpha=0.15, linewidth=0)
            ax_ev.plot(rel.index, rel.mean(axis=1), marker=st["marker"], markersize=3, **line)

            # (c) the lr sweep: final eval loss against lr, mean and min–max over replicates.
            sweep = final_losses(frame[frame["optimizer"] == name]).groupby("lr")["final_eval_loss"]
            mean, lo, hi = sweep.mean(), sweep.min(), sweep.max()
            x = mean.index.to_numpy(float) * (1 + 0.04 * (i - (len(names) - 1) / 2))  # dodge overlapping points
            ax_lr.errorbar(
                x,
                mean,
                yerr=[mean - lo, hi - mean],
                marker=st["marker"],
                markersize=3.5,
                capsize=1.5,
                elinewidth=0.7,
                **line,
            )
            j = list(mean.index).index(lrs[name])
            ax_lr.plot(
                x[j],
                mean.iloc[j],
                marker=st["marker"],
                markersize=8,
                color=st["color"],
                markerfacecolor="none",
                markeredgewidth=1.0,
                linestyle="none",
            )

        dev = str(frame["device"].iloc[0]) if "device" in frame.columns and len(frame) else "cpu"
        widths = "→".join(str(w) for w in (config.input_dim, *config.hidden, config.output_dim))
        ax_tr.set_yscale("log")
        ax_tr.set_xlabel("step")
        ax_tr.set_ylabel(f"training loss (MSE, {window}-step moving avg.)")
        ax_tr.set_xlim(0, config.steps)
        ax_tr.text(
            0.97,
            0.97,
            f"MLP {widths}, batch {config.batch_size}, {dev}\nlines: mean of {n_reps} seeds; bands: min–max",
            transform=ax_tr.transAxes,
            ha="right",
            va="top",
            fontsize=6.5,
            color="0.3",
        )
        ax_ev.set_yscale("log")
        ax_ev.axhline(1.0, color=plotting.REFERENCE_COLOR, linewidth=0.6, linestyle=":")
        ax_ev.set_xlabel("step")
        ax_ev.set_ylabel(f"eval loss ÷ {ref_label}'s (same seed)")
        ax_ev.set_xlim(0, config.steps)
        ax_ev.yaxis.set_major_locator(
            LogLocator(base=10, subs=(0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0))
        )
        ax_ev.yaxis.set_minor_locator(LogLocator(base=10, subs=np.arange(0.5, 4.0, 0.05).tolist()))
        ax_ev.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_ev.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax_lr.set_xscale("log")
        ax_lr.set_xticks(grid, [_lr_text(v) for v in grid])
        ax_lr.minorticks_off()
        ax_lr.set_xlabel("learning rate of the sweep (circled: the one used in a, b, d)")
        ax_lr.set_ylabel("final eval loss (mean; bars: min–max)")

        # (d) optimizer-step time on a log axis: median and IQR over every step of every run of the optimizer.
        ypos = np.arange(len(names))[::-1]
        med, q25, q75, labels = [], [], [], []
        for name in names:
            times = frame[(frame["optimizer"] == name) & (frame["step"] > 0)]["step_ms"].dropna().to_numpy(float)
            a, b, c = np.percentile(times, [25, 50, 75])
            q25.append(a)
            med.append(b)
            q75.append(c)
        for y, name, m, a, c in zip(ypos, names, med, q25, q75):
            st = optimizer_style(name, config)
            ax_t.plot([a, c], [y, y], color=st["color"], linewidth=2.5, alpha=0.5, solid_capstyle="butt")
            ax_t.plot(m, y, marker=st["marker"], color=st["color"], markersize=5, linestyle="none")
            ms = f"{m:.2f} ms" if m < 1 else f"{m:.1f} ms"
            text = f"{ms} · loss {ratio[name].mean():.2f}×" if name in ratio else ms
            labels.append((ax_t.text(c * 1.25, y, text, va="center", ha="left", fontsize=6.5), c * 1.25))
        ax_t.set_xscale("log")
        ax_t.set_xlim(min(q25) / 2, max(q75) * 10)
        _fit_labels(fig, ax_t, labels)
        ax_t.set_ylim(-0.6, len(names) - 0.4)
        ax_t.set_yticks(ypos, [optimizer_style(n, config)["label"] for n in names])
        ax_t.grid(axis="y", visible=False)
        ax_t.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        clocks = set(frame["clock"]) if "clock" in frame.columns else {"wall"}
        what = "1-thread CPU" if clocks == {"thread_cpu"} else "wall time"
        ax_t.set_xlabel(
            f"optimizer step, ms ({what}; median, IQR)\nloss: final eval loss ÷ {ref_label}'s (mean over seeds)"
        )
        for ax, letter in ((ax_tr, "a"), (ax_ev, "b"), (ax_lr, "c"), (ax_t, "d")):
            plotting.panel_label(ax, letter)

        fig.legend(handles=handles, loc="outside upper center", ncols=3)
        stem = out_dir / "training"
        plotting.save_figure(fig, stem)
    return [stem]
