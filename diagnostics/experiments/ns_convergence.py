"""Convergence of full and tiled Newton–Schulz to the polar factor, step by step.

For each schedule and each condition number ``κ`` one seeded matrix ``G`` with a
geometric spectrum (``σ_i`` from 1 down to ``1/κ``, Haar singular vectors; the
same ``G`` for every schedule) is orthogonalised by full Newton–Schulz and by
tiled Newton–Schulz (HiMuon) for several tile sizes ``T``.  Every curve comes
from ONE run of the map (:meth:`matfun.Map.iterates`, ``X_0 … X_K``; ``X_0`` is
the normalised input), with the float64 reference (SVD, polar factor,
tile-wise polar factor) computed once per matrix.

Figure ``ns_convergence``: a grid with one row per ``κ`` and three columns,
(a) the misalignment ``1 − cos(X_K, P)`` with ``P = polar(G)``, (b) the
relative error ``‖X_K − P‖_F / ‖P‖_F`` of full NS (tiled outputs are not drawn
there: each tile is normalised on its own, so ``‖NS_T(G)‖_F ≈ √(HW/T)`` against
``‖P‖_F = √r`` and the error mostly measures that scale), (c) for tiled NS the *worst tile's*
misalignment ``1 − min_ij cos(X_ij, P(G_ij))`` against that tile's own polar
factor (how far the per-tile iteration is from converging; the tiling loss
itself is in (a)).  Colour: schedule; linestyle and marker: tile size (solid
circles: full matrix).  Log y axes; the misalignment is computed as
``½‖X/‖X‖_F − P/‖P‖_F‖_F²`` (no cancellation: float64 runs resolve it down to
about 1e-30), and values below :data:`FLOOR` (1e-16) are drawn at 1e-16.

Rows: one per (schedule, condition number, map, step) with ``map``
(``"full"``/``"tiled"``), ``tile`` (0 for full), ``step``, ``alignment``
(``cos(X, P)``), ``misalignment`` (``1 − cos``), ``rel_error``
(``‖X − P‖_F/‖P‖_F``), ``tiling_loss`` (``1 − cos(P_T, P)``, the floor of
the tiled curves in (a); 0 for full), ``spectral_error`` (``‖X − P‖₂``) and
``sv_worst`` (``max_i |σ_i(U_rᵀ X V_r) − 1|``) for the full map (NaN for tiled), and for tiled maps ``tile_alignment_mean`` /
``tile_alignment_min`` (mean and worst tile of ``cos(X_ij, P(G_ij))``) with
``tile_misalignment_worst`` (``1 − tile_alignment_min``); NaN for the full map.

Plug-in maps (:mod:`diagnostics.plugins`) get one cell per ``κ`` and rows with
``map = "plugin"`` and the columns ``plugin``/``plugin_id``: every ``K`` they expose
(``iterates``, or a factory at ``K = 1 … max_steps``), or one row at their own ``K``;
drawn in (a) and (b) with star markers.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator

import matfun

from .. import matrices, metrics, plotting, plugins
from ..store import cell_seed
from ..threads import torch_threads

NAME = "ns_convergence"
DESCRIPTION = "alignment and error of full and tiled Newton-Schulz vs step K, per schedule and condition number"

#: Smallest value drawn on the log axes: misalignments below it (float64 runs resolve
#: ``½‖X̂ − P̂‖²`` down to about 1e-30) are drawn at it; the columns keep the exact values.
FLOOR = 1e-16

#: Matrices with at most this many entries run with one torch thread on the CPU.
SMALL_ENTRIES = 1 << 15


@dataclasses.dataclass(frozen=True)
class Config:
    """Schedules × condition numbers; full NS and tiled NS at each tile size."""

    schedules: tuple[str, ...] = ("cubic", "jordan", "you", "polar_express")
    condition_numbers: tuple[float, ...] = (10.0, 1e3, 1e6)
    shape: tuple[int, int] = (256, 512)
    tiles: tuple[int, ...] = (32, 64, 128)
    max_steps: int = 30
    precision: str = "float64"

    def __post_init__(self) -> None:
        unknown = [s for s in self.schedules if s not in matfun.SCHEDULES]
        if unknown:
            raise ValueError(f"unknown schedule(s) {unknown}; valid: {sorted(matfun.SCHEDULES)}")
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be (H, W) with H, W >= 1, got {self.shape}")
        if any(k < 1 for k in self.condition_numbers):
            raise ValueError("condition numbers must be >= 1")
        if any(int(t) < 1 for t in self.tiles):
            raise ValueError("tile sizes must be >= 1")
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.precision not in matfun.PRECISIONS:
            raise ValueError(f"precision must be one of {matfun.PRECISIONS}")

    @classmethod
    def quick(cls) -> Config:
        return cls(shape=(64, 128), tiles=(16, 32), max_steps=15)


def cells(config: Config) -> list[dict]:
    builtin = [
        {"schedule": s, "condition_number": float(k)} for k in config.condition_numbers for s in config.schedules
    ]
    return builtin + [c for k in config.condition_numbers for c in plugins.cells(condition_number=float(k))]


def geometric_input(shape: tuple[int, int], condition_number: float, seed: int) -> np.ndarray:
    """The float64 test matrix of one condition number (shared by every schedule of a run)."""
    return matrices.geometric(
        tuple(shape), condition_number, seed=cell_seed(seed, {"condition_number": float(condition_number)})
    )


@contextlib.contextmanager
def cpu_threads_for(shape: tuple[int, ...], device: str) -> Iterator[None]:
    """One torch CPU thread for small matrices, restored afterwards.

    At quick-test sizes (64×128) a matmul takes ~0.2 ms single-threaded, and the
    OpenMP hand-off of a second thread costs more than it saves — up to 50× more
    on a loaded shared machine (measured: 12 ms per ``baddbmm`` with 2 threads at
    load 8 on 2 cores).  Results are unchanged up to float rounding order.
    """
    small = str(device) == "cpu" and int(np.prod(shape)) <= SMALL_ENTRIES
    with torch_threads(1 if small else None):
        yield


def to_float64(X: Any) -> np.ndarray:
    if hasattr(X, "detach"):
        return X.detach().cpu().double().numpy()
    return np.asarray(X, dtype=np.float64)


def misalignment(X: Any, P: np.ndarray) -> float:
    """``1 − cos(X, P)`` as ``½‖X/‖X‖_F − P/‖P‖_F‖_F²`` in float64 (no cancellation near 0)."""
    X = to_float64(X)
    nx, npp = np.linalg.norm(X), np.linalg.norm(P)
    if nx == 0 or npp == 0:
        return float(nx != npp)
    D = X / nx - P / npp
    return float(0.5 * np.sum(D * D))


def relative_error(X: Any, P: np.ndarray) -> float:
    """``‖X − P‖_F / ‖P‖_F`` in float64."""
    return float(np.linalg.norm(to_float64(X) - P) / np.linalg.norm(P))


def plugin_rows(plugin: plugins.Plugin, G: Any, ref: metrics.Reference, max_steps: int) -> pd.DataFrame:
    """Rows of a plug-in map on ``G``: every ``K`` it exposes (one row for a plain callable)."""
    steps, outputs = zip(*plugin.curve(G, max_steps))
    iterates = [to_float64(X) for X in outputs]
    err = metrics.per_step(metrics.spectral_error, iterates, ref)
    return pd.DataFrame(
        {
            "map": "plugin",
            "tile": 0,
            "step": np.asarray(steps, dtype=float),
            "alignment": metrics.per_step(metrics.alignment, iterates, ref),
            "misalignment": [misalignment(X, ref.P) for X in iterates],
            "rel_error": [relative_error(X, ref.P) for X in iterates],
            "tiling_loss": 0.0,
            "spectral_error": err["spectral"],
            "sv_worst": err["worst"],
            "tile_alignment_mean": np.nan,
            "tile_alignment_min": np.nan,
            "tile_misalignment_worst": np.nan,
        }
    )


def run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    G64 = geometric_input(config.shape, cell["condition_number"], seed)
    ref = metrics.reference(G64)
    G = matrices.to_backend(G64, backend="torch", device=device) if device != "cpu" else G64
    plugin = plugins.for_cell(cell)
    if plugin is not None:
        with cpu_threads_for(config.shape, device):
            return plugin_rows(plugin, G, ref, config.max_steps)
    inner = matfun.NewtonSchulz(config.max_steps, cell["schedule"], config.precision)
    maps: list[tuple[int, matfun.Map]] = [(0, inner)] + [(int(t), matfun.Tiled(inner, int(t))) for t in config.tiles]
    frames = []
    for tile, map_ in maps:
        with cpu_threads_for(config.shape, device):
            iterates = [to_float64(X) for X in map_.iterates(G)]  # one run: X_0 … X_K
        align = metrics.per_step(metrics.alignment, iterates, ref)
        rows = {
            "map": "full" if tile == 0 else "tiled",
            "tile": tile,
            "step": np.arange(len(iterates)),
            "alignment": align,
            "misalignment": [misalignment(X, ref.P) for X in iterates],
            "rel_error": [relative_error(X, ref.P) for X in iterates],
            "tiling_loss": metrics.tiling_loss(ref, tile) if tile else 0.0,
        }
        if tile == 0:  # singular values on the range of G: only meaningful for the spectral (full) map
            err = metrics.per_step(metrics.spectral_error, iterates, ref)
            rows["spectral_error"] = err["spectral"]
            rows["sv_worst"] = err["worst"]
        else:
            rows["spectral_error"] = rows["sv_worst"] = np.nan
        if tile:
            per_tile = metrics.per_step(metrics.per_tile_alignment, iterates, ref, tile=tile)
            rows["tile_alignment_mean"] = per_tile["mean"]
            rows["tile_alignment_min"] = per_tile["min"]
            rows["tile_misalignment_worst"] = 1.0 - per_tile["min"]
        else:
            rows["tile_alignment_mean"] = rows["tile_alignment_min"] = rows["tile_misalignment_worst"] = np.nan
        frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)


def draw_plugins(ax: Any, frame: pd.DataFrame, column: str, names: list[str], max_steps: int) -> list[Any]:
    """Plug-in curves of ``column`` against the step (a horizontal level when ``K`` is unknown); returns the lines."""
    lines = []
    for name in names:
        d = frame[frame["plugin"] == name].sort_values("step")
        if d.empty:
            continue
        y = np.maximum(d[column].to_numpy(dtype=float), FLOOR)
        color = plugins.color(name, names)
        if d["step"].isna().all():
            lines.append(ax.axhline(y[0], color=color, linestyle=(0, (5, 1.5)), linewidth=1.4))
        elif len(d) == 1:
            lines += ax.plot(d["step"], y, color=color, marker="*", markersize=8, linestyle="none")
        else:
            lines += ax.plot(
                d["step"], y, color=color, linewidth=1.6, marker="*", markersize=5, markevery=max(1, max_steps // 6)
            )
    return lines


def plugin_handles(frame: pd.DataFrame, names: list[str]) -> list[Line2D]:
    """Legend entries naming each plug-in (and how its step count is shown)."""
    out = []
    for name in names:
        d = frame[frame["plugin"] == name]
        how = "" if len(set(d["step"])) > 1 else (" (K unknown)" if d["step"].isna().all() else " (own K)")
        out.append(
            Line2D([], [], color=plugins.color(name, names), marker="*", linewidth=1.6, label=f"{name} (plug-in){how}")
        )
    return out


def _fmt_kappa(k: float) -> str:
    e = np.log10(k)
    return rf"$\kappa = 10^{{{round(e)}}}$" if abs(e - round(e)) < 1e-9 and k >= 100 else rf"$\kappa = {k:g}$"


def plot(frame: pd.DataFrame, config: Config, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    schedules = [s for s in config.schedules if s in set(frame["schedule"])]
    kappas = [k for k in config.condition_numbers if np.isclose(frame["condition_number"], k).any()]
    tiles = [0] + [int(t) for t in config.tiles]
    columns = [
        ("misalignment", r"$1 - \cos(X_K, P)$"),
        ("rel_error", r"$\|X_K - P\|_F \,/\, \|P\|_F$"),
        ("tile_misalignment_worst", r"$1 - \min_{ij} \cos(X_{ij}, P(G_{ij}))$"),
    ]
    titles = ["alignment with polar(G)", "error of full NS", "tiled NS: worst tile"]
    mark_every = max(1, config.max_steps // 6)
    names = plugins.names_in(frame)
    with plotting.style():
        fig = plotting.figure("double", 1.85 * len(kappas) + 0.55, nrows=len(kappas), ncols=3, sharex=True)
        axes = np.array(fig.axes).reshape(len(kappas), 3)
        for i, kappa in enumerate(kappas):
            d_k = frame[np.isclose(frame["condition_number"], kappa)]
            for j, (col, ylabel) in enumerate(columns):
                ax = axes[i, j]
                for name in schedules:
                    d_s = d_k[d_k["schedule"] == name]
                    for tile in tiles:
                        if (col == "tile_misalignment_worst") != (tile != 0) and col != "misalignment":
                            continue  # (b): full NS only; (c): tiled only
                        d = d_s[d_s["tile"] == tile].sort_values("step")
                        if d.empty:
                            continue
                        ax.plot(
                            d["step"],
                            np.maximum(d[col].to_numpy(dtype=float), FLOOR),
                            color=plotting.schedule_color(name),
                            linewidth=1.0 if tile else 1.3,
                            markersize=3,
                            markevery=mark_every,
                            **plotting.tile_style(tile),
                        )
                if col != "tile_misalignment_worst":
                    draw_plugins(ax, d_k, col, names, config.max_steps)
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(base=10, numticks=6))
                ax.set_xlim(0, config.max_steps)
                if i == 0:
                    ax.set_title(titles[j])
                if i == len(kappas) - 1:
                    ax.set_xlabel("Newton–Schulz steps $K$")
                ax.set_ylabel(ylabel if j else f"{_fmt_kappa(kappa)}\n{ylabel}")
                plotting.panel_label(ax, "abcdefghijklmnopqrstuvwxyz"[i * 3 + j])
        handles = (
            [Line2D([], [], color=plotting.schedule_color(s), label=plotting.schedule_label(s)) for s in schedules]
            + [
                Line2D([], [], color="0.35", markersize=3, label=plotting.tile_label(t), **plotting.tile_style(t))
                for t in tiles
            ]
            + plugin_handles(frame, names)
        )
        ncols = min(len(handles), 6) if names else len(handles)  # plug-in labels are long: wrap
        fig.legend(handles=handles, loc="outside upper center", ncols=ncols)
        stem = out_dir / "ns_convergence"
        plotting.save_figure(fig, stem)
    return [stem]
