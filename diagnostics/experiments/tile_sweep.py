"""Cross-tile information loss of tiled Newton–Schulz (HiMuon) against the tile size.

Tiled NS orthogonalises each ``T×T`` tile on its own, so it drops every spectral
interaction across tile boundaries.  For each input ``G`` and tile size ``T`` this
experiment measures, with :func:`diagnostics.metrics.information_loss`,

* the tiling loss ``1 − cos(P_T(G), P(G))`` (exact tile-wise polar vs exact polar:
  what tiling throws away even with infinitely many steps),
* the truncation loss ``1 − cos(NS_{T,K}(G), P_T(G))`` (``K`` steps of the schedule
  vs the exact tile-wise polar),
* the total ``1 − cos(NS_{T,K}(G), P(G))``,
* the a-priori predictor :func:`diagnostics.metrics.gram_coupling` (share of
  the Gram energy outside the tile-block diagonal), and the same share computed
  on the *tile-normalised* input (every tile divided by its own Frobenius norm,
  which is what tiled NS and ``P_T`` see: they are blind to a tile's scale).

Finding the figure is built to show: weak coupling is the worst case.  A tile
of tiny entries is orthogonalised to full strength (per-tile normalisation), so
at ``c = 0.1`` the tiling loss is larger than for a dense matrix (``c = 1``) even
where the Gram coupling is nearly 0; the tile-normalised share tracks this
(rank correlation with the tiling loss much higher than the raw share).

Inputs: :func:`diagnostics.matrices.tile_coupled` matrices (block diagonal on a
grid of ``reference_tile`` tiles, mixed with a dense Gaussian of the same norm at
coupling ``c``; ``c = 0`` is exactly block diagonal, ``c = 1`` dense) and realistic
momenta ``M`` taken at the last step of short training runs
(:func:`diagnostics.streams.teacher_student_stream`, weight ``d_out × d_in``, and
:func:`diagnostics.streams.mlp_stream`, the hidden-to-hidden ``fc2.weight``).

Figure ``tile_sweep``: (a) tiling, (b) truncation, (c) total loss against ``T``
(log–log; coupled inputs coloured by coupling, averaged over ``samples`` seeds;
the dotted vertical line marks the coupling grid ``reference_tile``; values below
:data:`FLOOR` (1e-4; here they are exact zeros up to rounding) are drawn on the shaded floor with
open markers); (d) the tiling loss (linear axes) against the Gram-coupling predictor and (e)
against the tile-normalised Gram coupling, for every (input, T) with ``T`` below
the matrix size, each with Spearman's rank correlation over those points.

Rows: one per (input, tile size) with ``tile``, ``H``, ``W``, ``matrix`` (a label of
the input), ``aligned`` (``T`` is a multiple of ``reference_tile`` or covers the
matrix: then tile boundaries never cut a coupling block), ``whole`` (the tile covers
the matrix: tiled NS is full NS), the losses ``tiling``, ``truncation``, ``total``,
the predictor ``gram_coupling`` (mean of rows/cols), ``gram_coupling_rows``,
``gram_coupling_cols``, ``gram_coupling_tile_normalised`` (see above), and ``worst_tile_alignment`` (smallest per-tile
``cos(NS_{T,K}(G)_ij, P(G_ij))``).  Coupled inputs carry the cell's ``coupling`` and
``sample``; stream inputs have ``coupling`` empty (NaN).

Plug-in maps (:mod:`diagnostics.plugins`) run as the per-tile map
(``matfun.Tiled(plugin, T)``, a factory at ``K = steps``) on every input; their rows
(``map = "plugin"``) carry ``tiling``, ``truncation``, ``total`` and
``worst_tile_alignment`` and are drawn dashed with stars in (b) and (c).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator
from scipy.stats import spearmanr

import matfun

from .. import matrices, metrics, plotting, plugins, streams
from ..store import cell_seed
from ..threads import torch_threads
from .ns_convergence import misalignment

NAME = "tile_sweep"
DESCRIPTION = "cross-tile information loss (tiling / truncation / total) vs tile size, with the Gram-coupling predictor"

#: Panels (a)–(c) are log scaled; losses below this (the exact zeros of aligned tiles at
#: coupling 0 and of a tile covering the matrix come out near 1e-30) are drawn on this floor.
FLOOR = 1e-4

#: Stream kinds and the weight matrix whose momentum is used.
STREAM_MATRIX = {"teacher_student": "weight", "mlp": "fc2.weight"}
STREAM_LABELS = {"teacher_student": "teacher–student momentum", "mlp": "MLP momentum (fc2)"}
STREAM_STYLE = {
    "teacher_student": {"color": plotting.OKABE_ITO["black"], "marker": "o"},
    "mlp": {"color": plotting.OKABE_ITO["reddish_purple"], "marker": "D"},
}
_COUPLING_COLORS = [
    plotting.OKABE_ITO[k] for k in ("sky_blue", "bluish_green", "orange", "vermillion", "blue", "yellow")
]


@dataclasses.dataclass(frozen=True)
class Config:
    """Tile sizes × inputs (coupled matrices at several couplings, realistic momenta)."""

    shape: tuple[int, int] = (1024, 1024)
    tiles: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
    reference_tile: int = 128
    couplings: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0)
    samples: int = 2
    steps: int = 5
    schedule: str = "jordan"
    streams: tuple[str, ...] = ("teacher_student", "mlp")
    stream_steps: int = 400
    stream_width: int = 512

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be (H, W) with positive sizes, got {self.shape}")
        if not self.tiles or min(self.tiles) < 1:
            raise ValueError("tiles must be positive")
        if self.reference_tile < 1:
            raise ValueError("reference_tile must be positive")
        if any(not 0.0 <= c <= 1.0 for c in self.couplings):
            raise ValueError("couplings must lie in [0, 1]")
        if self.samples < 1 or self.steps < 0 or self.stream_steps < 1 or self.stream_width < 2:
            raise ValueError("samples, stream_steps >= 1, steps >= 0, stream_width >= 2")
        unknown = [s for s in self.streams if s not in STREAM_MATRIX]
        if unknown:
            raise ValueError(f"unknown stream(s) {unknown}; valid: {sorted(STREAM_MATRIX)}")
        if self.schedule not in matfun.SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {sorted(matfun.SCHEDULES)}")

    @classmethod
    def quick(cls) -> Config:
        return cls(
            shape=(256, 256),
            tiles=(16, 32, 64, 128, 256),
            reference_tile=64,
            samples=1,
            stream_steps=60,
            stream_width=256,
        )


def cells(config: Config) -> list[dict]:
    out: list[dict] = [
        {"source": "coupled", "coupling": float(c), "sample": i}
        for c in config.couplings
        for i in range(config.samples)
    ]
    out += [{"source": s} for s in config.streams]
    return out + [c for base in out for c in plugins.cells(**base)]


def _stream_momentum(config: Config, kind: str, seed: int) -> np.ndarray:
    """The momentum ``M`` at the last step of a short run (float64 numpy)."""
    w = config.stream_width
    last = config.stream_steps - 1
    if kind == "teacher_student":
        run = streams.teacher_student_stream(config.stream_steps, record_steps=[last], d_in=w, d_out=w // 2, seed=seed)
    else:
        run = streams.mlp_stream(
            config.stream_steps, record_steps=[last], sizes=(64, w, w, 10), record=[STREAM_MATRIX[kind]], seed=seed
        )
    return np.asarray(run.get(STREAM_MATRIX[kind], last).M, dtype=np.float64)


def tile_normalised(G: np.ndarray, tile: int) -> np.ndarray:
    """``G`` with every tile divided by its own Frobenius norm (zero tiles stay zero)."""
    from matfun.tiling import assemble, merge_group, split_group, tile_groups

    groups = tile_groups(G.shape[-2], G.shape[-1], (tile, tile))
    blocks = []
    for g in groups:
        t = split_group(G, g)
        n = np.sqrt(np.sum(t * t, axis=(-2, -1), keepdims=True))
        blocks.append(merge_group(t / np.where(n > 0, n, 1.0), g))
    return np.asarray(assemble(blocks, groups))


def run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    with torch_threads(1):
        return _run_cell(config, cell, device, seed)


def _run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    import torch

    s = cell_seed(seed, cell) % (2**31)
    if cell["source"] == "coupled":
        G64 = np.asarray(matrices.tile_coupled(config.shape, config.reference_tile, cell["coupling"], seed=s))
        label = f"coupled c={cell['coupling']:g}"
    else:
        G64 = _stream_momentum(config, cell["source"], s)
        label = STREAM_LABELS[cell["source"]]
    H, W = G64.shape
    # The map under test runs in float32 on the requested device; references are float64 (metrics).
    G = torch.as_tensor(G64, dtype=torch.float32, device=device)
    ref = metrics.reference(G)
    rows = []
    plugin = plugins.for_cell(cell)
    if plugin is not None:  # the plug-in as the per-tile map (K = config.steps for a factory)
        per_tile = plugins.PluginMap(plugin, config.steps)
        for T in config.tiles:
            X = matfun.Tiled(per_tile, T)(G)
            rows.append(
                {
                    "matrix": label,
                    "map": "plugin",
                    "tile": int(T),
                    "H": H,
                    "W": W,
                    "whole": bool(T >= max(H, W)),
                    "tiling": float(metrics.tiling_loss(ref, T)),
                    "truncation": misalignment(X, ref.tile_polar(T)),
                    "total": misalignment(X, ref.P),
                    "worst_tile_alignment": float(metrics.per_tile_alignment(X, ref, T)["min"]),
                }
            )
        return pd.DataFrame(rows)
    for T in config.tiles:
        loss = metrics.information_loss(ref, T, config.steps, config.schedule)
        X = matfun.tiled_newton_schulz(G, T, steps=config.steps, coefficients=config.schedule)
        worst = metrics.per_tile_alignment(X, ref, T)["min"]
        whole = T >= max(H, W)
        rows.append(
            {
                "matrix": label,
                "tile": int(T),
                "H": H,
                "W": W,
                "aligned": bool(whole or T % config.reference_tile == 0),
                "whole": bool(whole),
                **{k: float(v) for k, v in loss.items()},
                "gram_coupling_tile_normalised": float(
                    metrics.gram_coupling(tile_normalised(ref.G, min(T, max(H, W))), T)["mean"]
                ),
                "worst_tile_alignment": float(worst),
            }
        )
    return pd.DataFrame(rows)


def _inputs(frame: pd.DataFrame, config: Config) -> list[tuple]:
    """(label, rows, plot style, row selector) per input family; coupled ones averaged over samples."""
    out: list[tuple] = []
    coupled = frame[frame["source"] == "coupled"]
    for i, c in enumerate(sorted(set(coupled["coupling"].astype(float)))):
        d = coupled[np.isclose(coupled["coupling"].astype(float), c)]
        d = d.groupby("tile", as_index=False)[["tiling", "truncation", "total"]].mean()

        def select(f: pd.DataFrame, c: float = c) -> pd.Series:
            return (f["source"] == "coupled") & np.isclose(f["coupling"].astype(float), c)

        style = {"color": _COUPLING_COLORS[i % len(_COUPLING_COLORS)], "marker": "s"}
        out.append((f"tile-coupled, c = {c:g}", d, style, select))
    for kind in config.streams:
        d = frame[frame["source"] == kind]
        if not d.empty:
            out.append(
                (
                    STREAM_LABELS[kind],
                    d.sort_values("tile"),
                    STREAM_STYLE[kind],
                    lambda f, kind=kind: f["source"] == kind,
                )
            )
    return out


def _floor_plot(ax, x, y, style: dict, linestyle: str = "-") -> None:
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    low = y < FLOOR
    ax.plot(x, np.maximum(y, FLOOR), color=style["color"], linestyle=linestyle, linewidth=1.0)
    ax.plot(x[~low], y[~low], color=style["color"], marker=style["marker"], linestyle="none")
    if low.any():
        ax.plot(
            x[low],
            np.full(low.sum(), FLOOR),
            color=style["color"],
            marker=style["marker"],
            linestyle="none",
            markerfacecolor="white",
        )


def _scatter(ax, frame: pd.DataFrame, families, config: Config, x: str) -> None:
    """Tiling loss against predictor column ``x`` for tiles below the matrix size."""
    sub = frame[~frame["whole"].astype(bool)]
    for _label, _, st, select in families:
        d = sub[select(sub)]
        ax.plot(d[x], d["tiling"], linestyle="none", color=st["color"], marker=st["marker"], alpha=0.8)
    ax.set_ylim(-0.03, max(1.0, float(sub["tiling"].max()) * 1.05) if len(sub) else 1.0)
    ax.set_xlim(-0.03, 1.0)
    ax.set_ylabel(r"tiling loss $1-\cos(P_T, P)$")
    if len(sub) >= 3:
        rho = spearmanr(sub[x], sub["tiling"]).statistic
        ax.text(
            0.03,
            0.97,
            rf"Spearman $\rho = {rho:.2f}$ ($n = {len(sub)}$)",
            transform=ax.transAxes,
            ha="left",
            va="top",
            fontsize=7,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
        )


#: Dash patterns of plug-in per-tile maps in panels (b) and (c), one per plug-in.
_PLUGIN_DASHES = [(0, (4, 1.5)), (0, (1.5, 1.5)), (0, (6, 1.5, 1.5, 1.5))]


def _draw_plugins(ax, frame: pd.DataFrame, families, key: str, names: list[str]) -> None:
    """Plug-in curves (dashed, stars) in each input family's colour, averaged like the built-in ones."""
    for i, name in enumerate(names):
        rows = frame[frame["plugin"] == name]
        for _, _, st, select in families:
            d = rows[select(rows)].groupby("tile", as_index=False)[key].mean()
            ax.plot(
                d["tile"],
                np.maximum(d[key].to_numpy(float), FLOOR),
                color=st["color"],
                marker="*",
                linestyle=_PLUGIN_DASHES[i % len(_PLUGIN_DASHES)],
                linewidth=1.0,
                markersize=6,
            )


def plot(frame: pd.DataFrame, config: Config, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    names = plugins.names_in(frame)
    everything, frame = frame, plugins.builtin_rows(frame)
    families = _inputs(frame, config)
    tiles = sorted({int(t) for t in frame["tile"]})
    with plotting.style():
        fig = plotting.figure("double", 4.6, nrows=2, ncols=3)
        axes = fig.axes
        titles = {
            "tiling": r"tiling loss $1-\cos(P_T, P)$",
            "truncation": r"truncation $1-\cos(\mathrm{NS}_{T,K}, P_T)$",
            "total": r"total loss $1-\cos(\mathrm{NS}_{T,K}, P)$",
        }
        top = max(float(everything[["tiling", "truncation", "total"]].max().max()) * 2.0, 1e-2)
        for ax, (key, letter) in zip(axes[:3], [("tiling", "a"), ("truncation", "b"), ("total", "c")]):
            for _, d, st, _sel in families:
                _floor_plot(ax, d["tile"], d[key], st)
            if key != "tiling":
                _draw_plugins(ax, everything, families, key, names)
            ax.axvline(config.reference_tile, color="0.45", linestyle=":", linewidth=1.0)
            ax.axhspan(FLOOR / 3, FLOOR * 1.3, color="0.9", zorder=0, linewidth=0)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylim(FLOOR / 3, top)
            ax.set_xticks(tiles, [str(t) for t in tiles], rotation=45 if len(tiles) > 6 else 0)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("tile size $T$")
            ax.set_ylabel(titles[key])
            plotting.panel_label(ax, letter)

        _scatter(axes[3], frame, families, config, "gram_coupling")
        axes[3].set_xlabel("Gram coupling (off-tile share)")
        plotting.panel_label(axes[3], "d")
        _scatter(axes[4], frame, families, config, "gram_coupling_tile_normalised")
        axes[4].set_xlabel("Gram coupling, tile-normalised $G$")
        plotting.panel_label(axes[4], "e")

        # Legend and notes in the sixth slot.
        lax = axes[5]
        lax.axis("off")
        handles = [
            Line2D([], [], color=st["color"], marker=st["marker"], linewidth=1.0, label=label)
            for label, _, st, _sel in families
        ]
        handles += [
            Line2D(
                [],
                [],
                color="0.45",
                linestyle=":",
                linewidth=1.0,
                label=rf"coupling grid $T_0 = {config.reference_tile}$",
            ),
            Line2D(
                [],
                [],
                color="0.5",
                marker="s",
                markerfacecolor="white",
                linestyle="none",
                label=rf"(a–c) below $10^{{{int(np.log10(FLOOR))}}}$: exact 0 up to rounding",
            ),
        ]
        handles += [
            Line2D(
                [],
                [],
                color="0.3",
                marker="*",
                linestyle=_PLUGIN_DASHES[i % len(_PLUGIN_DASHES)],
                label=f"(b, c) {name} (plug-in) per tile",
            )
            for i, name in enumerate(names)
        ]
        lax.legend(
            handles=handles,
            loc="upper left",
            frameon=False,
            borderaxespad=0.0,
            **({"fontsize": 6, "labelspacing": 0.25} if names else {}),
        )
        lax.text(
            0.0,
            0.02,
            f"{config.schedule} schedule, K = {config.steps}, float32 NS\n"
            f"coupled inputs {config.shape[0]}×{config.shape[1]} ("
            + ("1" if config.samples == 1 else f"mean of {config.samples}")
            + " per\ncoupling and seed); "
            f"momenta after {config.stream_steps} steps",
            transform=lax.transAxes,
            fontsize=6.5,
            color="0.35",
            va="bottom",
        )
        stem = out_dir / "tile_sweep"
        plotting.save_figure(fig, stem)
    return [stem]
