"""Orthogonalisation as the dual of the nuclear norm: how much of ``‖G‖_*`` each map attains.

``polar(G)`` maximises ``⟨G, O⟩`` over ``‖O‖₂ ≤ 1`` and attains ``‖G‖_*``
(orthogonalisation is steepest descent under the spectral norm).  For every map
``X`` this experiment measures, against the number of Newton–Schulz steps ``K``,

* the duality efficiency ``⟨G, X⟩ / (‖G‖_* ‖X‖₂)`` (scale free; 1 exactly for the
  polar factor, below 1 when ``X``'s singular values on ``G``'s range are uneven),
* the nuclear norm captured ``⟨G, X⟩ / ‖G‖_*`` (not scale free: a map that
  overshoots 1 can score above 1),

for full Newton–Schulz with each schedule, tiled Newton–Schulz (HiMuon) at a few
tile sizes ``T``, the smoothed polar map ``U diag(σ/√(σ²+ε²)) Vᵀ`` at a few ``ε``
(``ε`` relative to ``‖G‖_F``, the units NS normalises to; K-independent) and
the exact polar factor.  Two inputs: a seeded matrix with a geometric spectrum of
condition number ``κ``, and a realistic momentum matrix ``M`` (Muon convention,
``β₁ = 0.95``) recorded at the last step of a short teacher–student regression run
(:func:`diagnostics.streams.teacher_student_stream`, ``d_out × d_in = shape``).
NS curves come from ONE run per map (:meth:`matfun.Map.iterates`).

Figure ``duality``: rows: input matrix; columns: (left) duality efficiency,
(right) nuclear norm captured, against ``K``.  Colour: schedule; linestyle and
marker: tile size (solid circles: full matrix); grey horizontal lines: smoothed
polar at each ``ε`` (labelled); black dotted: exact polar (1).  Tiled NS is left
out of the right column (its range is printed instead): each tile is normalised
on its own, so ``‖X‖₂ > 1`` and the scale-dependent nuclear norm captured runs to
several times 1.

Rows: one per (matrix, map, step) with ``map`` (``"full_ns"``, ``"tiled_ns"``,
``"smoothed_polar"``, ``"polar"``), ``schedule`` (NS maps; empty otherwise),
``tile`` (0 = no tiling), ``eps`` (relative smoothing level of the smoothed polar
map; NaN otherwise), ``step`` (NaN for the K-independent maps),
``duality_efficiency``, ``nuclear_captured`` and ``alignment`` (``cos(X, P)``);
``input_condition`` is the input's ``σ_max/σ_min``.  The cell columns ``matrix``
and ``family`` (a schedule, or ``"polar"`` for the SVD-based maps) come from the store.
Plug-in maps (:mod:`diagnostics.plugins`) get one cell per matrix and rows with
``map = "plugin"`` (curves against ``K`` when they expose a step count).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

import matfun

from .. import matrices, metrics, plotting, plugins
from ..store import cell_seed
from .ns_convergence import cpu_threads_for, draw_plugins, plugin_handles, to_float64

NAME = "duality"
DESCRIPTION = "duality efficiency and nuclear norm captured vs K for full/tiled NS, smoothed and exact polar"

MATRIX_KINDS = ("geometric", "momentum")
MATRIX_LABELS = {"geometric": "geometric spectrum", "momentum": "teacher–student momentum"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Input matrices × (schedules + the SVD-based maps)."""

    matrices: tuple[str, ...] = MATRIX_KINDS
    schedules: tuple[str, ...] = ("cubic", "jordan", "you", "polar_express")
    tiles: tuple[int, ...] = (32, 128)
    smoothing_eps: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    shape: tuple[int, int] = (256, 512)
    condition_number: float = 1e3
    stream_steps: int = 200
    max_steps: int = 20
    precision: str = "float64"

    def __post_init__(self) -> None:
        unknown = [s for s in self.schedules if s not in matfun.SCHEDULES]
        if unknown:
            raise ValueError(f"unknown schedule(s) {unknown}; valid: {sorted(matfun.SCHEDULES)}")
        bad = [m for m in self.matrices if m not in MATRIX_KINDS]
        if bad:
            raise ValueError(f"unknown matrix kind(s) {bad}; valid: {MATRIX_KINDS}")
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be (H, W) with H, W >= 1, got {self.shape}")
        if any(int(t) < 1 for t in self.tiles):
            raise ValueError("tile sizes must be >= 1")
        if any(not e > 0 for e in self.smoothing_eps):
            raise ValueError("smoothing levels must be > 0")
        if self.condition_number < 1 or self.stream_steps < 1 or self.max_steps < 1:
            raise ValueError("need condition_number >= 1, stream_steps >= 1, max_steps >= 1")
        if self.precision not in matfun.PRECISIONS:
            raise ValueError(f"precision must be one of {matfun.PRECISIONS}")

    @classmethod
    def quick(cls) -> Config:
        return cls(shape=(64, 128), tiles=(16, 32), stream_steps=50, max_steps=12)


def cells(config: Config) -> list[dict]:
    builtin = [{"matrix": m, "family": f} for m in config.matrices for f in (*config.schedules, "polar")]
    return builtin + [c for m in config.matrices for c in plugins.cells(matrix=m)]


@functools.lru_cache(maxsize=4)
def _momentum(shape: tuple[int, int], steps: int, seed: int) -> np.ndarray:
    from ..streams import teacher_student_stream

    H, W = shape
    stream = teacher_student_stream(steps, d_out=H, d_in=W, seed=seed)
    return np.array(stream[-1].M, dtype=np.float64)  # copy: the cache must not hand out a shared buffer


def input_matrix(config: Config, kind: str, seed: int) -> np.ndarray:
    """The float64 input of one matrix kind (shared by every map family of a run)."""
    s = cell_seed(seed, {"matrix": kind}) % (2**31)
    if kind == "geometric":
        return matrices.geometric(tuple(config.shape), config.condition_number, seed=s)
    return _momentum(tuple(int(d) for d in config.shape), int(config.stream_steps), int(s)).copy()


def _scores(X: np.ndarray, ref: metrics.Reference) -> dict[str, float]:
    return {
        "duality_efficiency": float(metrics.duality_efficiency(X, ref)),
        "nuclear_captured": float(metrics.nuclear_norm_captured(X, ref)),
        "alignment": float(metrics.alignment(X, ref)),
    }


def run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    G64 = input_matrix(config, cell["matrix"], seed)
    ref = metrics.reference(G64)
    G = G64 if device == "cpu" else matrices.to_backend(G64, backend="torch", device=device)
    rows: list[dict] = []
    family = cell.get("family")
    plugin = plugins.for_cell(cell)
    if plugin is not None:
        with cpu_threads_for(config.shape, device):
            curve = plugin.curve(G, config.max_steps)
        for k, X in curve:
            rows.append(
                {"map": "plugin", "schedule": None, "tile": 0, "eps": np.nan, "step": k, **_scores(to_float64(X), ref)}
            )
    elif family == "polar":
        scale = float(np.linalg.norm(G64))  # ε relative to ‖G‖_F (the units NS normalises to)
        for eps in config.smoothing_eps:
            X = to_float64(matfun.SmoothedPolar(eps * scale, precision="float64")(G))
            rows.append(
                {"map": "smoothed_polar", "schedule": None, "tile": 0, "eps": eps, "step": np.nan, **_scores(X, ref)}
            )
        X = to_float64(matfun.Polar(precision="float64")(G))
        rows.append({"map": "polar", "schedule": None, "tile": 0, "eps": np.nan, "step": np.nan, **_scores(X, ref)})
    else:
        assert family is not None  # a cell without a plug-in is a built-in one: cells() gives it a family
        inner = matfun.NewtonSchulz(config.max_steps, family, config.precision)
        maps = [(0, inner)] + [(int(t), matfun.Tiled(inner, int(t))) for t in config.tiles]
        for tile, map_ in maps:
            with cpu_threads_for(config.shape, device):
                iterates = [to_float64(X) for X in map_.iterates(G)]  # one run: X_0 … X_K
            for k, X in enumerate(iterates):
                rows.append(
                    {
                        "map": "tiled_ns" if tile else "full_ns",
                        "schedule": family,
                        "tile": tile,
                        "eps": np.nan,
                        "step": k,
                        **_scores(X, ref),
                    }
                )
    frame = pd.DataFrame(rows)
    frame["input_condition"] = float(ref.S[0] / ref.S[-1]) if ref.S[-1] > 0 else np.inf
    return frame


def _matrix_title(kind: str, config: Config, cond: float) -> str:
    if kind == "geometric":
        e = np.log10(config.condition_number)
        k = rf"10^{{{round(e)}}}" if abs(e - round(e)) < 1e-9 and e >= 2 else f"{config.condition_number:g}"
        return rf"geometric spectrum, $\kappa = {k}$"
    return rf"{MATRIX_LABELS.get(kind, kind)}, $\kappa$ = {cond:.0f}"


def _label_right(ax, labels: list[tuple[float, str]], gap: float = 0.055) -> None:
    """Labels just right of the axes at data heights, nudged apart to at least ``gap`` (axes fraction)."""
    if not labels:
        return
    lo, hi = ax.get_ylim()
    ys = sorted(((v - lo) / (hi - lo), text) for v, text in labels)
    placed: list[float] = []
    for y, _ in ys[::-1]:  # from the top down
        placed.append(min(y, placed[-1] - gap) if placed else y)
    for (_, text), yp in zip(ys[::-1], placed):
        ax.annotate(
            text,
            (1.0, yp),
            xycoords="axes fraction",
            xytext=(2, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize=6,
            color="0.35",
            annotation_clip=False,
        )


def plot(frame: pd.DataFrame, config: Config, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    kinds = [m for m in config.matrices if m in set(frame["matrix"])]
    schedules = [s for s in config.schedules if s in set(frame["schedule"].dropna())]
    tiles = [0] + [int(t) for t in config.tiles]
    columns = [
        ("duality_efficiency", r"duality efficiency $\langle G, X\rangle / (\|G\|_* \|X\|_2)$"),
        ("nuclear_captured", r"nuclear norm captured $\langle G, X\rangle / \|G\|_*$"),
    ]
    smooth_styles = [(0, (6, 2)), (0, (3, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2))]
    mark_every = max(1, config.max_steps // 6)
    names = plugins.names_in(frame)
    with plotting.style():
        fig = plotting.figure("double", 2.35 * len(kinds) + 0.45, nrows=len(kinds), ncols=2, sharex=True)
        axes = np.array(fig.axes).reshape(len(kinds), 2)
        for i, kind in enumerate(kinds):
            d_m = frame[frame["matrix"] == kind]
            cond = float(d_m["input_condition"].iloc[0])
            for j, (col, ylabel) in enumerate(columns):
                ax = axes[i, j]
                # Nuclear norm captured is not scale free, and a tiled output has ‖X‖₂ > 1
                # (every tile is normalised on its own): tiled NS is far off that scale.
                drawn = tiles if col == "duality_efficiency" else [0]
                ns = d_m[d_m["map"].isin(["full_ns", "tiled_ns"]) & d_m["tile"].isin(drawn)]
                for name in schedules:
                    for tile in drawn:
                        d = ns[(ns["schedule"] == name) & (ns["tile"] == tile)].sort_values("step")
                        if d.empty:
                            continue
                        ax.plot(
                            d["step"],
                            d[col],
                            color=plotting.schedule_color(name),
                            linewidth=1.3 if tile == 0 else 0.9,
                            markersize=3,
                            markevery=mark_every,
                            **plotting.tile_style(tile),
                        )
                shown = pd.concat([ns, d_m[d_m["map"].isin(["smoothed_polar", "polar", "plugin"])]])
                lo, hi = float(np.nanmin(shown[col])), float(np.nanmax(shown[col]))
                pad = 0.05 * max(hi - lo, 0.2)
                ax.set_ylim(lo - pad, hi + pad)
                sm = d_m[d_m["map"] == "smoothed_polar"].sort_values("eps")
                labels = []
                for n, (_, r) in enumerate(sm.iterrows()):
                    ax.axhline(
                        r[col], color="0.5", linewidth=0.8, linestyle=smooth_styles[n % len(smooth_styles)], zorder=1
                    )
                    labels.append((float(r[col]), rf"$\varepsilon$={r['eps']:g}"))
                _label_right(ax, labels)
                draw_plugins(ax, d_m, col, names, config.max_steps)
                pol = d_m[d_m["map"] == "polar"]
                if not pol.empty:
                    ax.axhline(
                        float(pol[col].iloc[0]), color=plotting.REFERENCE_COLOR, linestyle=":", linewidth=1.0, zorder=2
                    )
                tiled = d_m[d_m["map"] == "tiled_ns"]
                if col != "duality_efficiency" and not tiled.empty:
                    ax.text(
                        0.97,
                        0.04,
                        f"tiled NS (not drawn): {tiled[col].min():.2f} to {tiled[col].max():.2f}\n"
                        r"(per-tile normalisation: $\|X\|_2 > 1$)",
                        transform=ax.transAxes,
                        ha="right",
                        va="bottom",
                        fontsize=6.5,
                        color="0.3",
                    )
                ax.set_xlim(0, config.max_steps)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel(ylabel)
                if i == len(kinds) - 1:
                    ax.set_xlabel("Newton–Schulz steps $K$")
                ax.set_title(_matrix_title(kind, config, cond))
                plotting.panel_label(ax, "abcdefgh"[i * 2 + j])
        handles = (
            [Line2D([], [], color=plotting.schedule_color(s), label=plotting.schedule_label(s)) for s in schedules]
            + [
                Line2D([], [], color="0.35", markersize=3, label=plotting.tile_label(t), **plotting.tile_style(t))
                for t in tiles
            ]
            + [
                Line2D(
                    [],
                    [],
                    color="0.5",
                    linestyle=smooth_styles[0],
                    linewidth=0.8,
                    label=r"smoothed polar $P_\varepsilon$ ($\varepsilon$ / $\|G\|_F$)",
                ),
                Line2D([], [], color=plotting.REFERENCE_COLOR, linestyle=":", linewidth=1.0, label="exact polar"),
            ]
            + plugin_handles(frame, names)
        )
        ncols = (len(handles) + 1) // 2
        fig.legend(handles=handles, loc="outside upper center", ncols=min(ncols, 5) if names else ncols)
        stem = out_dir / "duality"
        plotting.save_figure(fig, stem)
    return [stem]
