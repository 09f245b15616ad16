"""Cost of the maps against the matrix size: model FLOPs, measured time, achieved GFLOP/s.

For square ``n×n`` float32 inputs (standard Gaussian, on the requested device) the
experiment times the exact polar factor (:func:`matfun.polar`, SVD), full
Newton–Schulz (``steps`` steps of ``schedule``) and tiled Newton–Schulz (HiMuon) at
each tile size, plus a dense ``n×n×n`` GEMM (``A @ B``, the same device and dtype),
all in the same cell and *interleaved* (:func:`interleaved_timings`: after
``warmup`` untimed calls each, ``repeats`` rounds that take one sample of every map
in turn, each sample at least ``min_time`` seconds; CUDA is synchronised), so a
load spike on a shared machine hits all maps alike instead of one.  On a CPU the
cell runs on ``cpu_threads`` threads (default 1: on a small shared CPU a second
thread makes matmul times jump, see :mod:`diagnostics.threads`), and with one
thread the clock is the thread's CPU time (``time.thread_time``): on a loaded
machine wall time also counts the time the process waits for a core, which made
the quick sizes scatter by 3× (full NS faster at n = 128 than at n = 96); on a
quiet machine the two agree.  Elsewhere (several threads, CUDA) it is wall time.  Model FLOPs come
from each map's ``flops`` method (the analytic matmul count; an estimate for the
SVD).  Nothing here is asserted about time: timings on a shared CPU are noisy.

Figure ``scaling``: (a) model FLOPs and (b) measured time against ``n`` (log–log;
the legend above the panels gives the least-squares slopes of log time on log n,
:func:`diagnostics.timing.scaling_exponent`, and of log FLOPs, fitted on the
upper half of the sizes, at least :data:`MIN_FIT_SIZES` of them, :func:`fit_sizes`:
below that, fixed per-call overheads dominate — on an H100 every tiled call up to
n = 2048 takes about 1.4 ms.  A slope is printed only when it is reliable
(:func:`reliable_slope`: at least :data:`MIN_FIT_SIZES` sizes in the fitted range and
r² ≥ :data:`MIN_R_SQUARED`), otherwise "—"); (c) achieved
GFLOP/s (model FLOPs / time) against ``n`` with the dense-GEMM roofline, the best GEMM
rate measured at any ``n``, dashed (and the GEMM rate at every ``n`` as faint crosses).
Full NS ``K(4n³ + 2n³)`` and tiled NS ``≈ 6 n² T K`` differ in slope (3 vs 2).

Rows: one per (n, map) with ``map`` (``polar``, ``ns``, ``tiled``, ``gemm``),
``tile`` (0 when untiled), ``label``, ``flops`` (model), ``seconds`` (median),
``spread`` (interquartile range of the samples), ``gflops`` (``flops/seconds/1e9``),
``dtype``, ``clock`` (``thread_cpu`` or ``wall``, :func:`diagnostics.timing.pick_clock`).  ``n`` comes from the cell.

Plug-in maps (:mod:`diagnostics.plugins`) get one cell per ``n`` and a row with
``map = "plugin"``: timed on ``G`` converted to their own array library (a factory
at ``K = steps``) in interleaved rounds with matfun's full NS (its time in the same
rounds: ``ns_seconds_same_cell``), FLOPs from their ``flops(shape)`` or else counted
by torch's FLOP counter (``flops_source`` says which; a numpy map cannot be
counted); drawn with star markers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D

import matfun

from .. import plotting, plugins, timing
from ..threads import torch_threads

NAME = "scaling"
DESCRIPTION = "model FLOPs, measured time and achieved GFLOP/s vs n for exact polar, full NS and tiled NS, with a same-run GEMM roofline"

_TILE_COLORS = [plotting.OKABE_ITO[k] for k in ("vermillion", "bluish_green", "sky_blue", "reddish_purple", "yellow")]


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes × maps; float32 square inputs."""

    ns: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    tiles: tuple[int, ...] = (64, 128, 256)
    steps: int = 5
    schedule: str = "jordan"
    dtype: str = "float32"
    warmup: int = 2
    repeats: int = 5
    min_time: float = 0.05
    polar_max_n: int = 4096
    cpu_threads: int = 1

    def __post_init__(self) -> None:
        if len(set(self.ns)) < 2 or min(self.ns) < 2:
            raise ValueError("ns needs at least two distinct sizes >= 2 (to fit a slope)")
        if not self.tiles or min(self.tiles) < 1:
            raise ValueError("tiles must be positive")
        if self.schedule not in matfun.SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError("dtype must be float32 or float64")
        if self.warmup < 0 or self.repeats < 1 or self.steps < 1 or self.min_time < 0:
            raise ValueError("warmup >= 0, repeats >= 1, steps >= 1, min_time >= 0")
        if self.cpu_threads < 0:
            raise ValueError("cpu_threads must be >= 0 (0: leave torch's setting)")

    @classmethod
    def quick(cls) -> Config:
        """CPU-sized: seven sizes 96–768 (ratios 1.33–1.5; slopes fitted on the top four), 7 interleaved rounds."""
        return cls(ns=(96, 128, 192, 256, 384, 512, 768), tiles=(64, 128), warmup=1, repeats=7, min_time=0.02)

    @classmethod
    def full(cls) -> Config:
        """GPU-sized: up to 8192 (the SVD only up to ``polar_max_n``)."""
        return cls(ns=(256, 512, 1024, 2048, 4096, 8192))


def cells(config: Config) -> list[dict]:
    sizes = [{"n": int(n)} for n in sorted(config.ns)]
    return sizes + [c for size in sizes for c in plugins.cells(**size)]


def counted_flops(fn, G) -> float:
    """FLOPs of ``fn(G)`` counted by torch's FLOP counter (``nan`` when it sees no torch matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(G)
    total = counter.get_total_flops()
    return float(total) if total > 0 else float("nan")


def plugin_row(plugin: plugins.Plugin, config: Config, G: torch.Tensor, device: str) -> dict:
    """Time a plug-in on ``G`` in interleaved rounds with matfun's full NS.

    ``G`` is converted to the plug-in's own array library first, so the conversion is
    not timed.  The clock is the built-ins' (:func:`diagnostics.timing.pick_clock`),
    except for numpy maps: wall time, as one thread's CPU time misses numpy's BLAS threads.
    """
    n = int(G.shape[-1])
    X = G if plugin.library in ("torch", "any") else G.cpu().numpy()
    plugin.final(X, config.steps)  # contract check before timing (raises PluginError)
    mine, ns = plugin.raw(config.steps), matfun.NewtonSchulz(config.steps, config.schedule)
    clock, read_clock = timing.pick_clock(device, config.cpu_threads)
    if plugin.library == "numpy":  # numpy's BLAS threads are invisible to one thread's CPU clock
        clock, read_clock = "wall", time.perf_counter
    on_cuda = torch.device(device).type == "cuda"
    t, t_ns = interleaved_timings(
        [lambda: mine(X), lambda: ns(G)],
        warmup=config.warmup,
        repeats=config.repeats,
        min_time=config.min_time,
        clock=read_clock,
        sync=(lambda: torch.cuda.synchronize(device)) if on_cuda else (lambda: None),
    )
    flops, source = plugin.flops((n, n), config.steps), "flops()"
    if np.isnan(flops):
        flops, source = counted_flops(lambda A: plugin.final(A, config.steps), G), "torch FLOP counter"
    k = f"K = {config.steps}" if plugin.is_factory else (f"K = {plugin.steps}" if plugin.steps else "own K")
    return {
        "map": "plugin",
        "tile": 0,
        "label": f"{plugin.name} (plug-in, {k})",
        "flops": flops,
        "flops_source": source if np.isfinite(flops) else "not counted: no torch ops (define flops(shape))",
        "seconds": t.median,
        "spread": t.spread,
        "ns_seconds_same_cell": t_ns.median,
        "gflops": timing.achieved_gflops(flops, t.median) if np.isfinite(flops) else np.nan,
        "dtype": config.dtype,
        "clock": clock,
    }


def _maps(config: Config, n: int) -> list[tuple[str, int, str, matfun.Map]]:
    out: list[tuple[str, int, str, matfun.Map]] = []
    if n <= config.polar_max_n:
        out.append(("polar", 0, "exact polar (SVD)", matfun.Polar()))
    ns = matfun.NewtonSchulz(config.steps, config.schedule)
    out.append(("ns", 0, f"full NS (K = {config.steps})", ns))
    for T in config.tiles:
        out.append(("tiled", int(T), f"tiled NS, T = {T}", matfun.Tiled(ns, T)))
    return out


def interleaved_timings(
    calls: list,
    *,
    warmup: int,
    repeats: int,
    min_time: float,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], object] = lambda: None,
) -> list[timing.Timing]:
    """Time zero-argument callables in interleaved rounds (ABC ABC …), one :class:`~diagnostics.timing.Timing` each.

    Each callable first gets ``warmup`` untimed calls and one timed call that fixes how
    many calls make a sample of at least ``min_time`` seconds; then ``repeats`` rounds
    take one such sample of every callable in turn, so slow phases of a shared machine
    spread over all of them.  ``clock`` reads seconds (wall time by default; the
    thread's CPU time, ``time.thread_time``, for single-threaded CPU work on a loaded
    machine); ``sync`` runs before and after each sample (e.g. CUDA synchronisation).
    """

    def sample(fn: Callable[[], object], number: int) -> float:
        sync()
        start = clock()
        for _ in range(number):
            fn()
        sync()
        return (clock() - start) / number

    numbers = []
    for fn in calls:
        for _ in range(warmup):
            fn()
        numbers.append(max(1, math.ceil(min_time / max(sample(fn, 1), 1e-9))) if min_time > 0 else 1)
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for i, fn in enumerate(calls):
            samples[i].append(sample(fn, numbers[i]))
    out = []
    for values, number in zip(samples, numbers):
        q25, q50, q75 = np.percentile(values, [25, 50, 75])
        out.append(
            timing.Timing(
                median=float(q50), spread=float(q75 - q25), samples=tuple(values), repeats=repeats, number=number
            )
        )
    return out


def run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    on_cpu = torch.device(device).type == "cpu"
    with torch_threads(config.cpu_threads or None if on_cpu else None):
        return _run_cell(config, cell, device, seed)


def _run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    n = int(cell["n"])
    dtype = getattr(torch, config.dtype)
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(n, n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    plugin = plugins.for_cell(cell)
    if plugin is not None:
        return pd.DataFrame([plugin_row(plugin, config, G, device)])
    B = torch.randn(n, n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    entries: list[tuple[str, int, str, int, Callable[[], Any]]] = [
        (kind, tile, label, int(map_.flops((n, n))), functools.partial(map_, G))
        for kind, tile, label, map_ in _maps(config, n)
    ]
    entries.append(("gemm", 0, "dense GEMM", timing.gemm_flops(n), lambda: torch.matmul(G, B)))
    clock, read_clock = timing.pick_clock(device, config.cpu_threads)
    on_cuda = torch.device(device).type == "cuda"
    times = interleaved_timings(
        [e[-1] for e in entries],
        warmup=config.warmup,
        repeats=config.repeats,
        min_time=config.min_time,
        clock=read_clock,
        sync=(lambda: torch.cuda.synchronize(device)) if on_cuda else (lambda: None),
    )
    rows = [
        {
            "map": kind,
            "tile": tile,
            "label": label,
            "flops": flops,
            "seconds": t.median,
            "spread": t.spread,
            "gflops": timing.achieved_gflops(flops, t.median),
            "dtype": config.dtype,
            "clock": clock,
        }
        for (kind, tile, label, flops, _), t in zip(entries, times)
    ]
    return pd.DataFrame(rows)


def _series(frame: pd.DataFrame, config: Config) -> list[tuple[str, pd.DataFrame, dict]]:
    out = []
    styles = {
        "polar": {"color": plotting.REFERENCE_COLOR, "marker": "o", "linestyle": "-"},
        "ns": {"color": plotting.schedule_color(config.schedule), "marker": "o", "linestyle": "-"},
    }
    for kind in ("polar", "ns"):
        d = frame[frame["map"] == kind].sort_values("n")
        if not d.empty:
            out.append((str(d["label"].iloc[0]), d, styles[kind]))
    tiled = frame[frame["map"] == "tiled"]
    for i, T in enumerate(sorted({int(t) for t in tiled["tile"]})):
        d = tiled[tiled["tile"] == T].sort_values("n")
        out.append(
            (str(d["label"].iloc[0]), d, {"color": _TILE_COLORS[i % len(_TILE_COLORS)], **plotting.tile_style(T)})
        )
    names = plugins.names_in(frame)
    for name in names:
        d = frame[frame["plugin"] == name].sort_values("n")
        out.append((str(d["label"].iloc[0]), d, {"color": plugins.color(name, names), "marker": "*", "linestyle": "-"}))
    return out


#: A slope is printed only if fitted on at least this many sizes ...
MIN_FIT_SIZES = 4
#: ... with at least this coefficient of determination (log–log).
MIN_R_SQUARED = 0.98


def fit_sizes(ns: list[int]) -> list[int]:
    """The sizes the slopes are fitted on: the upper half, but at least :data:`MIN_FIT_SIZES`
    (all sizes if there are fewer), where launch and call overheads no longer dominate
    (on a GPU, small tiled calls all take the same ~1 ms)."""
    ns = sorted({int(n) for n in ns})
    return ns[max(min(len(ns) // 2, len(ns) - MIN_FIT_SIZES), 0) :]


def reliable_slope(ns, values) -> float | None:
    """Least-squares log–log slope of ``values`` against ``ns``, or ``None`` when unreliable.

    Unreliable: fewer than :data:`MIN_FIT_SIZES` distinct sizes, or r² below
    :data:`MIN_R_SQUARED` (the points do not lie on a power law, e.g. a load spike).
    """
    if len(set(np.asarray(ns).tolist())) < MIN_FIT_SIZES:
        return None
    fit = timing.scaling_exponent(ns, values)
    return fit.slope if fit.r_squared >= MIN_R_SQUARED else None


def _slope(d: pd.DataFrame, column: str, sizes: list[int]) -> str:
    d = d[d["n"].isin(sizes) & np.isfinite(d[column].to_numpy(float))]  # a plug-in's FLOPs may be unknown
    slope = reliable_slope(d["n"].to_numpy(), d[column].to_numpy(float))
    return "—" if slope is None else f"{slope:.2f}"


def plot(frame: pd.DataFrame, config: Config, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    series = _series(frame, config)
    ns = sorted({int(n) for n in frame["n"]})
    device = str(frame["device"].iloc[0]) if "device" in frame else "?"
    sizes = fit_sizes(ns)
    with plotting.style():
        fig = plotting.figure("double", 3.4, ncols=3)
        ax_f, ax_t, ax_g = fig.axes
        for _label, d, st in series:
            kw = {"color": st["color"], "marker": st["marker"], "linestyle": st["linestyle"], "linewidth": 1.1}
            ax_f.plot(d["n"], d["flops"], **kw)
            ax_t.plot(d["n"], d["seconds"], **kw)
            ax_g.plot(d["n"], d["gflops"], **kw)
        gemm = frame[frame["map"] == "gemm"].sort_values("n")
        if not gemm.empty:
            # the best GEMM rate measured at any size: a "roofline" a measurement exceeds is not one
            best = gemm.loc[gemm["gflops"].astype(float).idxmax()]
            roof = float(best["gflops"])
            ax_g.axhline(roof, color="0.3", linestyle="--", linewidth=1.0)
            ax_g.plot(gemm["n"], gemm["gflops"], linestyle="none", marker="x", color="0.6", markersize=4)
            # above every marker, so the label never covers one
            label_y = max(roof, float(np.nanmax(frame["gflops"].to_numpy(float)))) * 1.25
            ax_g.text(
                ns[0],
                label_y,
                f"GEMM roofline {roof:.0f} GFLOP/s\n(best GEMM, {device}, n = {int(best['n'])})",
                fontsize=6.5,
                color="0.3",
                va="bottom",
            )
        clocks = set(frame["clock"]) if "clock" in frame else {"wall"}
        what = "CPU time of 1 thread" if clocks == {"thread_cpu"} else "wall time"
        ax_t.text(
            0.97,
            0.03,
            f"{what},\nmedian of {config.repeats} interleaved rounds",
            transform=ax_t.transAxes,
            ha="right",
            va="bottom",
            fontsize=6.5,
            color="0.3",
        )
        for ax, ylabel, letter in (
            (ax_f, "model FLOPs", "a"),
            (ax_t, "time per call (s)", "b"),
            (ax_g, "achieved GFLOP/s (model FLOPs / time)", "c"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(ns, [str(n) for n in ns], rotation=45 if len(ns) > 5 else 0)
            ax.minorticks_off()
            ax.set_xlabel(f"matrix size n (n×n {config.dtype})")
            ax.set_ylabel(ylabel)
            plotting.panel_label(ax, letter)
        rates = frame["gflops"].to_numpy(float)
        ax_g.set_ylim(float(np.nanmin(rates)) / 2, float(np.nanmax(rates)) * 4)
        handles = [
            Line2D(
                [],
                [],
                color=st["color"],
                marker=st["marker"],
                linestyle=st["linestyle"],
                label=f"{label}: slope FLOPs {_slope(d, 'flops', sizes)}, time {_slope(d, 'seconds', sizes)}",
            )
            for label, d, st in series
        ]
        handles.append(Line2D([], [], color="0.6", marker="x", linestyle="none", label="dense GEMM (same cell)"))
        fig.legend(
            handles=handles,
            loc="outside upper center",
            ncols=2,
            title=f"log–log slopes fitted on n = {', '.join(map(str, sizes))} "
            f"(— : fewer than {MIN_FIT_SIZES} sizes or r² < {MIN_R_SQUARED:g})",
            title_fontsize=7,
        )
        stem = out_dir / "scaling"
        plotting.save_figure(fig, stem)
    return [stem]
