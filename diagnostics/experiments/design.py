"""Designed Newton–Schulz schedules (:func:`matfun.design_schedule`) against the published ones at equal K.

A published schedule is designed once for every matrix (Polar Express: singular
values of ``G/‖G‖_F`` in ``[10⁻³, 1]``).  What users run is narrower: the largest
normalised singular value of a momentum matrix is about 0.5, not 1, and its
smallest kept one depends on the layer and the tile size.  Three parts, all at
the same step count ``K``:

``controlled``
    Geometric spectra ``σ_i = geomspace(1, 1/κ)`` (shape ``config.shape``).
    ``designed``: worst-case design for the class interval
    ``[σ_min, σ_max]/‖σ‖₂``; ``designed_mean``: the mean-alignment objective with
    the class spectrum as prior.  Row metric: ``1 − cos(NS_k(G), polar(G))`` for
    ``k = 0..K``.
``momenta``
    Realistic momenta of an MLP (:func:`diagnostics.streams.mlp_stream`).  The
    interval (and prior) are measured on the momenta of an EARLIER step
    (``record_steps[0]``): per tile of size ``T`` (``0`` = whole matrix), each
    tile's singular values over its Frobenius norm, pooled; ``ℓ`` = the
    ``lower_quantile`` of those above the rank cut-off, ``u`` = 1.05 × the
    largest (at most 1).  Evaluated on the momenta of the LAST recorded step:
    ``1 − cos(NS_{T,K}(M), P_T(M))`` against the exact tile-wise polar factor
    (the truncation loss; ``P`` itself for ``T = 0``).
``precision``
    The class interval of ``precision_kappa`` designed with safety 0, the float32
    margin and the bfloat16 margin (:data:`matfun.design.PRECISION_SAFETY`), run
    in float32 and in bfloat16 (native on CUDA, emulated on CPU): how much
    safety bf16 rounding needs.

Figure ``design``: (a) controlled misalignment at ``K`` against ``κ``; (b)
momenta misalignment at ``K`` against tile size; (c) the precision part against
``k``.  A map whose output is not finite is drawn at misalignment 1.

Findings of the quick run (``--quick``, seed 0, K = 5, CPU, bf16 emulated):

* controlled: knowing the interval pays — the design reaches ``1 − cos`` of
  0 / 5e-13 / 3.4e-3 at κ = 10 / 100 / 1000 against 4.0e-3 / 4.4e-3 / 1.5e-2 for
  Polar Express (the best published one at κ = 1000; You is better at κ ≤ 100:
  1.4e-4, 8.3e-4); at κ = 1e4 five steps are too few for every schedule (≥ 0.06).
* realistic momenta: the worst-case design for the pooled tile interval is the
  WORST schedule (0.12–0.14): the interval is set by the smallest tiles' tails
  (ℓ ≈ 2e-5, u ≈ 1: the 10-row output layer has σ_max ≈ ‖M‖_F), so it gives up
  the bulk.  The mean-alignment design ties Polar Express (0.050 vs 0.049 full,
  0.043 vs 0.043 at T = 64) and is marginally better at T = 32 (0.034 vs 0.036).
* precision: without a safety margin the design diverges in bf16 at step 5
  (0.83) while float32 is unaffected (3.6e-3); the float32 margin 1e-3 and the
  bf16 margin 2e-2 both keep bf16 at 8–9e-3 (Polar Express: 1.9e-2).

Rows: ``part``, ``schedule``, ``precision``, ``condition_number`` / ``tile`` /
``matrix`` (where they apply), ``step``, ``misalignment``, ``lower``,
``upper``, ``safety`` (of the designed schedules; NaN for published ones).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

import matfun
from matfun.design import PRECISION_SAFETY

from .. import metrics, plotting, streams
from .ns_convergence import cpu_threads_for, geometric_input, to_float64
from .precision import compute_precision

NAME = "design"
DESCRIPTION = "designed minimax schedules vs published ones at equal K: controlled spectra, tiles of realistic momenta, bf16 safety"

PUBLISHED = ("jordan", "you", "polar_express")
DIVERGED = 1.0  # misalignment drawn for non-finite outputs


@dataclasses.dataclass(frozen=True)
class Config:
    """Step count, the three parts' inputs and the design's measurement choices."""

    steps: int = 5
    shape: tuple[int, int] = (256, 512)
    condition_numbers: tuple[float, ...] = (1e1, 1e2, 1e3, 1e4, 1e5)
    stream_steps: int = 300
    record_steps: tuple[int, int] = (150, 299)
    width: int = 256
    tiles: tuple[int, ...] = (0, 128, 64, 32)
    lower_quantile: float = 0.02
    precision_kappa: float = 1e3

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if len(self.record_steps) != 2 or not 0 <= self.record_steps[0] < self.record_steps[1] < self.stream_steps:
            raise ValueError("record_steps must be (design step, evaluation step) with 0 <= a < b < stream_steps")
        if any(t < 0 for t in self.tiles):
            raise ValueError("tiles must be >= 0 (0 = whole matrix)")
        if not 0 < self.lower_quantile < 0.5:
            raise ValueError("lower_quantile must lie in (0, 0.5)")
        if any(k <= 1 for k in self.condition_numbers) or self.precision_kappa <= 1:
            raise ValueError("condition numbers must be > 1")

    @classmethod
    def quick(cls) -> Config:
        return cls(
            shape=(64, 128),
            condition_numbers=(1e1, 1e2, 1e3, 1e4),
            stream_steps=60,
            record_steps=(30, 59),
            width=128,
            tiles=(0, 64, 32),
        )


def cells(config: Config) -> list[dict]:
    return [{"part": "controlled", "condition_number": float(k)} for k in config.condition_numbers] + [
        {"part": "momenta"},
        {"part": "precision"},
    ]


def class_interval(shape: tuple[int, int], kappa: float) -> tuple[float, float, np.ndarray]:
    """``[σ_min, σ_max]/‖σ‖₂`` and the normalised spectrum of the geometric class."""
    s = np.geomspace(1.0, 1.0 / kappa, min(shape))
    s = s / np.linalg.norm(s)
    return float(s[-1]), float(s[0]), s


def tile_spectra(matrices: list[np.ndarray], tile: int) -> np.ndarray:
    """Singular values of every tile (``tile = 0``: whole matrix) over the tile's Frobenius norm, pooled.

    Values at or below the rank cut-off ``max(h, w)·eps·σ_max`` of their tile are dropped.
    """
    pooled = []
    for M in matrices:
        H, W = M.shape
        th, tw = (H, W) if tile == 0 else (min(tile, H), min(tile, W))
        for i in range(0, H, th):
            for j in range(0, W, tw):
                block = M[i : i + th, j : j + tw]
                s = np.linalg.svd(block, compute_uv=False)
                if s.size == 0 or s[0] == 0:
                    continue
                keep = s > max(block.shape) * np.finfo(np.float64).eps * s[0]
                pooled.append(s[keep] / np.linalg.norm(s))
    return np.concatenate(pooled)


def interval_from_spectra(spectra: np.ndarray, lower_quantile: float) -> tuple[float, float]:
    """``(ℓ, u)`` for a design: a low quantile of the normalised spectra and 1.05 × their maximum (≤ 1)."""
    upper = min(1.0, 1.05 * float(spectra.max()))
    lower = min(float(np.quantile(spectra, lower_quantile)), 0.5 * upper)
    return lower, upper


def _designs(config: Config, lower: float, upper: float, prior: np.ndarray) -> dict[str, matfun.Schedule]:
    K = config.steps
    return {
        "designed": matfun.design_schedule(lower, upper, K, precision="float32", name="designed"),
        "designed_mean": matfun.design_schedule(
            lower, upper, K, precision="float32", objective="mean_alignment", prior=prior, name="designed_mean"
        ),
    }


def _misalignments(X_iterates: list, ref: metrics.Reference) -> list[float]:
    out = []
    for X in X_iterates:
        X64 = np.asarray(to_float64(X))
        out.append(float(1 - metrics.alignment(X64, ref)) if np.all(np.isfinite(X64)) else np.nan)
    return out


def _schedule_columns(schedule: matfun.Schedule) -> dict:
    if isinstance(schedule, matfun.DesignedSchedule):
        return {"lower": schedule.lower, "upper": schedule.upper, "safety": schedule.safety}
    return {"lower": np.nan, "upper": np.nan, "safety": np.nan}


def _controlled(config: Config, kappa: float, seed: int) -> pd.DataFrame:
    lower, upper, spectrum = class_interval(config.shape, kappa)
    G = geometric_input(config.shape, kappa, seed)
    ref = metrics.reference(G)
    schedules = {name: matfun.get_schedule(name) for name in PUBLISHED} | _designs(config, lower, upper, spectrum)
    rows = []
    for name, schedule in schedules.items():
        with cpu_threads_for(config.shape, "cpu"):
            iterates = list(matfun.NewtonSchulz(config.steps, schedule, "float64").iterates(G))
        for k, value in enumerate(_misalignments(iterates, ref)):
            rows.append(
                {
                    "schedule": name,
                    "precision": "float64",
                    "condition_number": kappa,
                    "step": k,
                    "misalignment": value,
                    **_schedule_columns(schedule),
                }
            )
    return pd.DataFrame(rows)


def _momenta(config: Config, seed: int) -> pd.DataFrame:
    w = config.width
    run = streams.mlp_stream(config.stream_steps, record_steps=config.record_steps, sizes=(64, w, w, 10), seed=seed)
    design_step, eval_step = config.record_steps
    design_set = [np.asarray(s.M, dtype=np.float64) for s in run.select(step=design_step)]
    evaluation = [(s.name, np.asarray(s.M, dtype=np.float64)) for s in run.select(step=eval_step)]
    rows = []
    for tile in config.tiles:
        spectra = tile_spectra(design_set, tile)
        lower, upper = interval_from_spectra(spectra, config.lower_quantile)
        schedules = {name: matfun.get_schedule(name) for name in PUBLISHED} | _designs(config, lower, upper, spectra)
        for matrix, M in evaluation:
            ref = metrics.reference(M)
            target = ref.P if tile == 0 else ref.tile_polar(tile)
            for name, schedule in schedules.items():
                with cpu_threads_for(M.shape, "cpu"):
                    if tile == 0:
                        X = matfun.newton_schulz(M, config.steps, schedule, precision="float64")
                    else:
                        X = matfun.tiled_newton_schulz(
                            M, tile, steps=config.steps, coefficients=schedule, precision="float64"
                        )
                X = np.asarray(X)
                value = (
                    float(1 - np.vdot(X, target) / (np.linalg.norm(X) * np.linalg.norm(target)))
                    if np.all(np.isfinite(X)) and np.linalg.norm(X) > 0
                    else np.nan
                )
                rows.append(
                    {
                        "schedule": name,
                        "precision": "float64",
                        "tile": tile,
                        "matrix": matrix,
                        "step": config.steps,
                        "misalignment": value,
                        **_schedule_columns(schedule),
                    }
                )
    return pd.DataFrame(rows)


def _precision(config: Config, device: str, seed: int) -> pd.DataFrame:
    kappa = config.precision_kappa
    lower, upper, _ = class_interval(config.shape, kappa)
    G64 = geometric_input(config.shape, kappa, seed)
    ref = metrics.reference(G64)
    G = G64
    if device != "cpu":
        from .. import matrices

        G = matrices.to_backend(G64, backend="torch", device=device)
    safeties = {
        "safety 0": 0.0,
        "float32 margin": PRECISION_SAFETY["float32"],
        "bf16 margin": PRECISION_SAFETY["bfloat16"],
    }
    schedules: dict[str, matfun.Schedule] = {
        f"designed ({label})": matfun.design_schedule(lower, upper, config.steps, safety=s)
        for label, s in safeties.items()
    }
    schedules["polar_express"] = matfun.get_schedule("polar_express")
    rows = []
    for name, schedule in schedules.items():
        for precision in ("float32", "bfloat16"):
            used = compute_precision(precision, device)
            with cpu_threads_for(config.shape, device):
                iterates = list(matfun.NewtonSchulz(config.steps, schedule, used).iterates(G))
            for k, value in enumerate(_misalignments(iterates, ref)):
                rows.append(
                    {
                        "schedule": name,
                        "precision": precision,
                        "condition_number": kappa,
                        "step": k,
                        "misalignment": value,
                        **_schedule_columns(schedule),
                    }
                )
    return pd.DataFrame(rows)


def run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    if cell["part"] == "controlled":
        return _controlled(config, cell["condition_number"], seed)
    if cell["part"] == "momenta":
        return _momenta(config, seed)
    return _precision(config, device, seed)


def _drawn(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), np.maximum(values, 1e-16), DIVERGED)


#: Display names of the designs in (a) and (b).
_LABELS = {"designed": "designed (worst case)", "designed_mean": "designed (mean alignment)"}
#: (c)'s worst-case designs at three safety margins: colours and markers none of (a)/(b)'s legend uses.
_SAFETY_STYLE = {"safety 0": ("#CC79A7", "x"), "float32 margin": ("0.15", "s"), "bf16 margin": ("0.55", "^")}


def _color(name: str) -> str:
    if name.startswith("designed ("):
        return _SAFETY_STYLE[name[10:-1]][0]
    return plotting.schedule_color(name)


def _label(name: str) -> str:
    if name.startswith("designed ("):
        return "worst case, " + name[10:-1]
    return _LABELS.get(name, plotting.schedule_label(name))


def plot(frame: pd.DataFrame, config: Config, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    K = config.steps
    with plotting.style():
        fig = plotting.figure("double", 2.9, ncols=3)
        ax_c, ax_m, ax_p = fig.axes
        d = frame[(frame["part"] == "controlled") & (frame["step"] == K)]
        for name, g in d.groupby("schedule", sort=False):
            g = g.sort_values("condition_number")
            ax_c.plot(
                g["condition_number"],
                _drawn(g["misalignment"]),
                marker="o",
                markersize=3,
                color=_color(name),
                label=_label(name),
            )
        ax_c.set_xscale("log")
        ax_c.set_xlabel(r"condition number $\kappa$")
        ax_c.set_ylabel(rf"$1 - \cos(X_K, P)$ at $K = {K}$")
        ax_c.set_title("geometric spectra")

        d = frame[frame["part"] == "momenta"]
        tiles = [t for t in config.tiles if (d["tile"] == t).any()]
        for name, g in d.groupby("schedule", sort=False):
            mean = [np.nanmean(_drawn(g[g["tile"] == t]["misalignment"])) for t in tiles]
            ax_m.plot(range(len(tiles)), mean, marker="o", markersize=3, color=_color(name), label=_label(name))
        ax_m.set_xticks(range(len(tiles)), ["full" if t == 0 else str(t) for t in tiles])
        ax_m.set_xlabel("tile size $T$")
        ax_m.set_ylabel(r"mean $1 - \cos(NS_{T,K}(M), P_T(M))$")
        ax_m.set_title("realistic momenta (MLP)")
        handles, labels = ax_m.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=len(handles))

        d = frame[frame["part"] == "precision"]
        for (name, precision), g in d.groupby(["schedule", "precision"], sort=False):
            g = g.sort_values("step")
            marker = _SAFETY_STYLE[name[10:-1]][1] if name.startswith("designed (") else "o"
            ax_p.plot(
                g["step"],
                _drawn(g["misalignment"]),
                color=_color(name),
                marker=marker,
                markersize=3,
                linestyle="-" if precision == "bfloat16" else "--",
                label=_label(name) if precision == "bfloat16" else None,
            )
        ax_p.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_p.set_xlabel("step $k$")
        ax_p.set_ylabel(r"$1 - \cos(X_k, P)$")
        ax_p.set_title(rf"safety, $\kappa = {config.precision_kappa:g}$")
        ax_p.legend(fontsize=6, loc="lower left", title="solid bf16, dashed fp32", title_fontsize=6)
        for ax, letter in zip(fig.axes, "abc"):
            ax.set_yscale("log")
            plotting.panel_label(ax, letter)
        stem = out_dir / "design"
        plotting.save_figure(fig, stem)
    return [stem]
