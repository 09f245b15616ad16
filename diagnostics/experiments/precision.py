"""Newton–Schulz in float64, float32 and bfloat16: where rounding stops the iteration.

For each schedule and condition number ``κ`` one seeded matrix ``G`` with a
geometric spectrum (the same float64 ``G`` as :mod:`.ns_convergence` for the
same seed, shape and ``κ``) is orthogonalised by full Newton–Schulz computed in
each precision.  bfloat16 runs as ``precision="bfloat16"`` (native bf16 tensor
cores) on CUDA and as ``"bfloat16-emulated"`` (float32 arithmetic, every fused
product rounded to bf16) on the CPU; column ``bf16_mode`` records which.  Every
metric is computed in float64 against the exact polar factor of the float64
input, from ONE run of each map (:meth:`matfun.Map.iterates`).

Figure ``precision``: one panel per ``κ``, the misalignment ``1 − cos(X_K, P)``
(log) against the step ``K``; colour: schedule, linestyle: precision.  A thin
grey line marks the bfloat16 floor (:func:`precision_floor`: the smallest, over
schedules, median bf16 misalignment over the last third of the steps), labelled
with its value.  Misalignments below 1e-16 are drawn at 1e-16 (float64 reaches
about 1e-30; the columns keep the exact values).

Rows: one per (schedule, condition number, precision, step) with ``precision``
(``"float64"``, ``"float32"``, ``"bfloat16"``), ``compute_precision`` (the
:data:`matfun.PRECISIONS` value actually used), ``bf16_mode`` (``"native"`` or
``"emulated"``: how this run computed bfloat16), ``step``, ``alignment``
(``cos(X, P)``), ``misalignment`` (``1 − cos`` as ``½‖X̂ − P̂‖_F²``) and
``rel_error`` (``‖X − P‖_F/‖P‖_F``).

Plug-in maps (:mod:`diagnostics.plugins`) are *fed* inputs of each precision (the
float64 ``G`` cast to float32, or rounded to a bfloat16 torch tensor) and compute in
whatever they compute in; their rows have ``map = "plugin"``, ``bf16_mode = "input"``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, MaxNLocator

import matfun

from .. import matrices, metrics, plotting, plugins
from .ns_convergence import (
    FLOOR,
    cpu_threads_for,
    draw_plugins,
    geometric_input,
    misalignment,
    plugin_handles,
    plugin_rows,
    relative_error,
    to_float64,
)

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType

NAME = "precision"
DESCRIPTION = (
    "alignment of full Newton-Schulz vs step K in float64, float32 and bfloat16 (native on CUDA, emulated on CPU)"
)

PRECISION_LABELS = {"float64": "float64", "float32": "float32", "bfloat16": "bfloat16"}
PRECISION_STYLES: dict[str, LineStyleType] = {"float64": "-", "float32": "--", "bfloat16": ":"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Schedules × condition numbers; every precision inside a cell."""

    schedules: tuple[str, ...] = ("cubic", "jordan", "you", "polar_express")
    condition_numbers: tuple[float, ...] = (10.0, 1e3, 1e6)
    precisions: tuple[str, ...] = ("float64", "float32", "bfloat16")
    shape: tuple[int, int] = (256, 512)
    max_steps: int = 20

    def __post_init__(self) -> None:
        unknown = [s for s in self.schedules if s not in matfun.SCHEDULES]
        if unknown:
            raise ValueError(f"unknown schedule(s) {unknown}; valid: {sorted(matfun.SCHEDULES)}")
        bad = [p for p in self.precisions if p not in PRECISION_STYLES]
        if bad:
            raise ValueError(f"unknown precision(s) {bad}; valid: {tuple(PRECISION_STYLES)}")
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be (H, W) with H, W >= 1, got {self.shape}")
        if any(k < 1 for k in self.condition_numbers):
            raise ValueError("condition numbers must be >= 1")
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")

    @classmethod
    def quick(cls) -> Config:
        return cls(condition_numbers=(10.0, 1e3), shape=(64, 128), max_steps=15)


def cells(config: Config) -> list[dict]:
    builtin = [
        {"schedule": s, "condition_number": float(k)} for k in config.condition_numbers for s in config.schedules
    ]
    return builtin + [c for k in config.condition_numbers for c in plugins.cells(condition_number=float(k))]


def plugin_input(G64: np.ndarray, precision: str, device: str) -> Any:
    """The input a plug-in is fed at ``precision``: float64/float32 arrays, a bfloat16 torch tensor."""
    import torch

    if precision == "bfloat16":
        return torch.as_tensor(G64, device=device).to(torch.bfloat16)
    if device != "cpu":
        return torch.as_tensor(G64, device=device).to(getattr(torch, precision))
    return G64.astype(precision)


def bf16_mode(device: str) -> str:
    """``"native"`` (torch bf16 arithmetic) on CUDA, ``"emulated"`` elsewhere."""
    return "native" if str(device).startswith("cuda") else "emulated"


def compute_precision(precision: str, device: str) -> str:
    if precision != "bfloat16":
        return precision
    return "bfloat16" if bf16_mode(device) == "native" else "bfloat16-emulated"


def run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    G64 = geometric_input(config.shape, cell["condition_number"], seed)
    ref = metrics.reference(G64)  # float64 polar factor of the float64 input
    G = G64 if device == "cpu" else matrices.to_backend(G64, backend="torch", device=device)
    mode = bf16_mode(device)
    frames = []
    plugin = plugins.for_cell(cell)
    if plugin is not None:  # the user's map fed inputs of each precision (bf16 rounding happens on input)
        for precision in config.precisions:
            with cpu_threads_for(config.shape, device):
                rows = plugin_rows(plugin, plugin_input(G64, precision, device), ref, config.max_steps)
            keep = ["map", "step", "alignment", "misalignment", "rel_error"]
            frames.append(
                rows[keep].assign(precision=precision, compute_precision="input " + precision, bf16_mode="input")
            )
        return pd.concat(frames, ignore_index=True)
    for precision in config.precisions:
        used = compute_precision(precision, device)
        map_ = matfun.NewtonSchulz(config.max_steps, cell["schedule"], used)
        with cpu_threads_for(config.shape, device):
            iterates = [to_float64(X) for X in map_.iterates(G)]  # one run: X_0 … X_K
        frames.append(
            pd.DataFrame(
                {
                    "precision": precision,
                    "compute_precision": used,
                    "bf16_mode": mode,
                    "step": np.arange(len(iterates)),
                    "alignment": metrics.per_step(metrics.alignment, iterates, ref),
                    "misalignment": [misalignment(X, ref.P) for X in iterates],
                    "rel_error": [relative_error(X, ref.P) for X in iterates],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def precision_floor(frame: pd.DataFrame, precision: str) -> float:
    """Smallest (over schedules) median misalignment over the last third of the steps."""
    d = frame[frame["precision"] == precision]
    if d.empty:
        return float("nan")
    k_max = int(d["step"].max())
    tail = d[d["step"] >= k_max - k_max // 3]
    return float(tail.groupby("schedule")["misalignment"].median().min())


def _fmt_kappa(k: float) -> str:
    e = np.log10(k)
    return rf"$\kappa = 10^{{{round(e)}}}$" if abs(e - round(e)) < 1e-9 and k >= 100 else rf"$\kappa = {k:g}$"


def plot(frame: pd.DataFrame, config: Config, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    schedules = [s for s in config.schedules if s in set(frame["schedule"])]
    precisions = [p for p in config.precisions if p in set(frame["precision"])]
    kappas = [k for k in config.condition_numbers if np.isclose(frame["condition_number"], k).any()]
    names = plugins.names_in(frame)
    modes = sorted(set(plugins.builtin_rows(frame)["bf16_mode"].astype(str)))
    with plotting.style():
        fig = plotting.figure("double", 2.75, ncols=len(kappas), sharey=True)
        for i, (ax, kappa) in enumerate(zip(fig.axes, kappas)):
            d_k = frame[np.isclose(frame["condition_number"], kappa)]
            for name in schedules:
                for precision in precisions:
                    d = d_k[(d_k["schedule"] == name) & (d_k["precision"] == precision)].sort_values("step")
                    if d.empty:
                        continue
                    ax.plot(
                        d["step"],
                        np.maximum(d["misalignment"].to_numpy(dtype=float), FLOOR),
                        color=plotting.schedule_color(name),
                        linestyle=PRECISION_STYLES[precision],
                        linewidth=1.6 if precision == "bfloat16" else 1.1,
                    )
            for precision in precisions:
                for line in draw_plugins(
                    ax, d_k[d_k["precision"] == precision], "misalignment", names, config.max_steps
                ):
                    line.set_linestyle(PRECISION_STYLES[precision])
            floor = precision_floor(d_k, "bfloat16")
            if np.isfinite(floor) and floor > 0:
                # a broad translucent band, not a thin line: no legend entry (float64 is a solid line) looks like it
                ax.axhline(floor, color="0.5", linewidth=4.0, alpha=0.3, zorder=0.8, solid_capstyle="butt")
                ax.text(
                    0.02,
                    floor / 1.5,
                    f"bf16 floor {floor:.1e}",
                    transform=ax.get_yaxis_transform(),
                    ha="left",
                    va="top",
                    fontsize=6.5,
                    color="0.25",
                )
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(0, config.max_steps)
            ax.set_title(_fmt_kappa(kappa))
            ax.set_xlabel("Newton–Schulz steps $K$")
            if i == 0:
                ax.set_ylabel(r"$1 - \cos(X_K, P)$, $P$ = float64 polar factor")
            plotting.panel_label(ax, "abcdefgh"[i])
        mode_note = "/".join(modes)
        handles = (
            [Line2D([], [], color=plotting.schedule_color(s), label=plotting.schedule_label(s)) for s in schedules]
            + [
                Line2D(
                    [],
                    [],
                    color="0.3",
                    linestyle=PRECISION_STYLES[p],
                    linewidth=1.6 if p == "bfloat16" else 1.1,
                    label=f"bfloat16 ({mode_note})" if p == "bfloat16" else PRECISION_LABELS[p],
                )
                for p in precisions
            ]
            + plugin_handles(frame, names)
        )
        ncols = min(len(handles), 6) if names else len(handles)  # plug-in labels are long: wrap
        fig.legend(handles=handles, loc="outside upper center", ncols=ncols)
        stem = out_dir / "precision"
        plotting.save_figure(fig, stem)
    return [stem]
