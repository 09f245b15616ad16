"""Scalar transfer functions p_K(σ) of the Newton–Schulz schedules.

Full Newton–Schulz is a spectral map, ``NS_K(G) = U p_K(Σ/‖G‖_F) Vᵀ``, so the
scalar composition ``p_K`` (:func:`matfun.transfer_function`) is the whole story
for it.  For each schedule and step count this experiment evaluates ``p_K`` on a
dense grid of normalised singular values ``σ ∈ [σ_min, σ_max]`` (:func:`sigma_grid`)
and fits the closest smoothed polar map ``σ ↦ σ/√(σ² + ε̂²)`` (least squares over
the log-spaced points of the grid, with :func:`diagnostics.metrics.smoothing_level`),
which summarises "how smoothed" a finite NS map is by one number ``ε̂``.

Sampling: the tuned schedules oscillate fast.  At ``K = 5`` Jordan's ``p_5`` has
21 local extrema in ``[1e-2, 1]`` (closest 0.023 decades apart), You's 69 and
Polar Express's about 125 swings of ±0.14 spaced roughly evenly in *linear* σ
(0.003–0.005 apart, so 0.001–0.002 decades apart near σ = 1).  The grid is
therefore the union of ``n_sigma`` log-spaced and ``n_sigma`` linearly spaced
points: with the default 2001 each, linear interpolation of the samples is within
1e-4 of ``p_5`` for Jordan and You and within 1e-2 for Polar Express (against
400 001 log-spaced points); 97 log-spaced points, the old quick grid, were off by
up to 0.26 and drew aliased noise.

Figure ``transfer_functions``: (a) ``p_K(σ)`` at ``K = panel_steps`` with the
fitted smoothed-polar curves dashed and the exact polar factor (1) dotted;
(b) ``ε̂`` against ``K``.

Rows: one per (schedule, steps, σ) with ``sigma``, ``on_log_grid`` (whether σ is
one of the log-spaced points the fit uses), ``p``, ``smoothed_fit``,
``eps_hat``, ``fit_rmse`` / ``fit_max_residual`` (RMS and largest fit residual over
the grid) and
``eps_resolved`` (``ε̂ ≥ 2 σ_min``: otherwise ``p_K`` is already flat over the whole
grid, ε̂ is only bounded above by ``2 σ_min`` and panel (b) shows it as an upper limit).

Plug-in maps (:mod:`diagnostics.plugins`) are *measured* (:func:`measure_transfer`):
applied to ``U diag(σ) Vᵀ``, read back as ``p(σᵢ) = uᵢᵀ X vᵢ``, with
``spectral_residual`` and ``spectral`` saying whether the map is spectral at all
(a tiled map is not; the legend says so).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D

import matfun

from .. import matrices, plotting, plugins
from ..metrics import smoothing_level
from ..store import cell_seed

NAME = "transfer"
DESCRIPTION = "scalar transfer functions p_K(sigma) of each NS schedule, with the best-fitting smoothed polar map"


@dataclasses.dataclass(frozen=True)
class Config:
    """Sweep over schedules × step counts; σ on a log grid."""

    schedules: tuple[str, ...] = ("cubic", "jordan", "you", "polar_express")
    steps: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12)
    panel_steps: int = 5
    sigma_min: float = 1e-4
    sigma_max: float = 1.0
    n_sigma: int = 2001

    def __post_init__(self) -> None:
        unknown = [s for s in self.schedules if s not in matfun.SCHEDULES]
        if unknown:
            raise ValueError(f"unknown schedule(s) {unknown}; valid: {sorted(matfun.SCHEDULES)}")
        if self.panel_steps not in self.steps:
            raise ValueError(f"panel_steps={self.panel_steps} must be one of steps={self.steps}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("need 0 < sigma_min < sigma_max")
        if self.n_sigma < 8:
            raise ValueError("n_sigma must be at least 8")

    @classmethod
    def quick(cls) -> Config:
        # Only fewer step counts: the σ grid stays dense (a scalar map is cheap to evaluate).
        return cls(steps=(2, 5))


def cells(config: Config) -> list[dict]:
    return [{"schedule": s, "steps": k} for s in config.schedules for k in config.steps] + plugins.cells()


#: Plug-in maps are measured on one ``m × 1.5m`` matrix with ``m = min(n_sigma, MEASURE_SIZE)``.
MEASURE_SIZE = 256
#: A map counts as spectral when ``‖X − U p(Σ) Vᵀ‖_F / ‖X‖_F`` stays below this.  Rounding alone
#: stays far below it (float32 NS: ~1e-6, bf16-emulated NS: ~3e-3 at 97×145); a tiled map is ~0.3–0.6.
SPECTRAL_TOL = 2e-2


def measure_transfer(plugin: plugins.Plugin, config: Config, seed: int, device: str) -> pd.DataFrame:
    """Measure a plug-in's scalar map: apply it to ``G = U diag(σ) Vᵀ`` and read ``p(σᵢ) = uᵢᵀ X vᵢ``.

    ``σ`` is a log grid over ``[sigma_min, sigma_max]`` (``m`` points); the
    rows' ``sigma`` is ``σᵢ/‖G‖_F``, the normalised singular value of the
    built-in curves.  ``spectral_residual = ‖X − U diag(p) Vᵀ‖_F / ‖X‖_F`` tells
    whether the map is spectral (``X = U p(Σ) Vᵀ``); a tiled map is not, and
    its "transfer function" is then only the diagonal of ``Uᵀ X V``.
    """
    m = min(config.n_sigma, MEASURE_SIZE)
    sigma = np.geomspace(config.sigma_min, config.sigma_max, m)[::-1].copy()
    s = cell_seed(seed, {"measure": "transfer"}) % (2**31)
    U = matrices.haar_orthogonal(m, seed=s)
    V = matrices.haar_orthogonal(m + m // 2, seed=s + 1)[:, :m]
    G64 = (U * sigma) @ V.T
    G = G64 if device == "cpu" else torch.as_tensor(G64, device=device)
    x = sigma / np.linalg.norm(sigma)
    frames = []
    for k, X in plugin.curve(G, max(config.steps), ks=config.steps):
        if np.isfinite(k) and plugin.kind != "plain" and int(k) not in config.steps:
            continue
        X64 = X.detach().cpu().double().numpy() if hasattr(X, "detach") else np.asarray(X, dtype=np.float64)
        C = U.T @ X64 @ V
        p = np.diag(C).copy()
        residual = float(np.linalg.norm(X64 - (U * p) @ V.T) / max(np.linalg.norm(X64), 1e-300))
        order = np.argsort(x)
        fit = smoothing_level(np.abs(p[order]), x[order])
        frames.append(
            pd.DataFrame(
                {
                    "sigma": x[order],
                    "p": p[order],
                    "smoothed_fit": smoothed_polar_scalar(x[order], fit["eps"]),
                    "eps_hat": fit["eps"],
                    "fit_rmse": fit["residual"],
                    "fit_max_residual": fit["max_residual"],
                    "eps_resolved": bool(fit["eps"] >= RESOLUTION * float(x.min())),
                    "steps": k,
                    "spectral_residual": residual,
                    "spectral": residual <= SPECTRAL_TOL,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def smoothed_polar_scalar(sigma: np.ndarray, eps: float) -> np.ndarray:
    """``σ/√(σ² + ε²)``, the singular-value map of the smoothed polar factor."""
    return sigma / np.sqrt(sigma * sigma + eps * eps)


def sigma_grid(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The σ samples (ascending) and a mask of those on the log-spaced part.

    The union of ``n_sigma`` log-spaced points (resolves small σ) and ``n_sigma``
    linearly spaced points (resolves the oscillations near σ = 1, dense on a log
    axis) in ``[sigma_min, sigma_max]``.
    """
    log_part = np.logspace(np.log10(config.sigma_min), np.log10(config.sigma_max), config.n_sigma)
    linear_part = np.linspace(config.sigma_min, config.sigma_max, config.n_sigma)
    sigma = np.union1d(log_part, linear_part)
    return sigma, np.isin(sigma, log_part)


#: ``ε̂`` counts as resolved by a grid starting at ``σ_min`` when ``ε̂ ≥ RESOLUTION·σ_min``
#: (then the fitted ramp is below 0.45 at ``σ_min``: its rise lies inside the grid).
RESOLUTION = 2.0


def run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    plugin = plugins.for_cell(cell)
    if plugin is not None:
        return measure_transfer(plugin, config, seed, device)
    s, on_log = sigma_grid(config)
    sigma = torch.as_tensor(s, dtype=torch.float64, device=device)
    p = matfun.transfer_function(sigma, cell["steps"], cell["schedule"]).cpu().numpy()
    fit = smoothing_level(p[on_log], s[on_log])  # least squares over log ε on the log σ grid
    eps_hat = fit["eps"]
    return pd.DataFrame(
        {
            "sigma": s,
            "on_log_grid": on_log,
            "p": p,
            "smoothed_fit": smoothed_polar_scalar(s, eps_hat),
            "eps_hat": eps_hat,
            "fit_rmse": fit["residual"],
            "fit_max_residual": fit["max_residual"],
            "eps_resolved": bool(eps_hat >= RESOLUTION * config.sigma_min),
        }
    )


def plot(frame: pd.DataFrame, config: Config, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    schedules = [s for s in config.schedules if s in set(frame["schedule"])]
    with plotting.style():
        fig = plotting.figure("double", 2.7, ncols=2)
        ax_p, ax_e = fig.axes

        # (a) transfer functions at K = panel_steps, fitted smoothed polar dashed.
        builtin = plugins.builtin_rows(frame)
        at_k = builtin[builtin["steps"] == config.panel_steps]
        ax_p.axhline(1.0, color=plotting.REFERENCE_COLOR, linestyle=":", linewidth=1.0, zorder=3)
        handles = []
        for i, name in enumerate(schedules):
            d = at_k[at_k["schedule"] == name].sort_values("sigma")
            if d.empty:
                continue
            color = plotting.schedule_color(name)
            # Thin: the tuned schedules swing faster than a pixel near σ = 1 and draw a band there.
            (h,) = ax_p.plot(d["sigma"], d["p"], color=color, linewidth=0.6, label=plotting.schedule_label(name))
            # Neighbours' fits dash into each other's gaps: two fits that coincide (Jordan's and You's
            # ε̂ agree at K = 5) both stay visible instead of one hiding the other.
            ax_p.plot(
                d["sigma"], d["smoothed_fit"], color=color, linestyle=(4 * (i % 2), (4, 4)), linewidth=1.3, zorder=4
            )
            handles.append(h)
        handles += [
            Line2D(
                [],
                [],
                color="0.3",
                linestyle=(0, (4, 4)),
                linewidth=1.3,
                label=r"best smoothed polar $\sigma/\sqrt{\sigma^2+\hat\varepsilon^2}$",
            ),
            Line2D([], [], color=plotting.REFERENCE_COLOR, linestyle=":", linewidth=1.0, label="exact polar"),
        ]
        names = plugins.names_in(frame)
        plugin_handles = []
        for name in names:
            d = frame[frame["plugin"] == name]
            ks = sorted(set(d["steps"].dropna()))
            k = config.panel_steps if config.panel_steps in ks else (ks[-1] if ks else np.nan)
            d = d[d["steps"] == k] if ks else d
            residual = float(d["spectral_residual"].iloc[0])
            note = "" if bool(d["spectral"].iloc[0]) else f"; NOT spectral, residual {residual:.2f}"
            kk = f"K = {k:g}" if np.isfinite(k) else "K unknown"
            (h,) = ax_p.plot(
                d["sigma"],
                d["p"],
                color=plugins.color(name, names),
                linewidth=1.5,
                label=f"{name} (plug-in, measured, {kk}{note})",
            )
            plugin_handles.append(h)
        handles[len(schedules) : len(schedules)] = plugin_handles
        ax_p.set_xscale("log")
        ax_p.set_xlim(config.sigma_min, config.sigma_max)
        if names:  # the y range follows the spectral maps (a non-spectral "p" is only diag(Uᵀ X V))
            at_k = pd.concat([at_k, frame[frame["plugin"].notna() & frame["spectral"].eq(True)]])
        top = max(1.3, float(at_k["p"].max()) * 1.05) if not at_k.empty else 1.3
        ax_p.set_ylim(0.0, top)
        ax_p.set_xlabel(r"normalised singular value $\sigma = \sigma_i(G)\,/\,\|G\|_F$")
        ax_p.set_ylabel(rf"transfer function $p_K(\sigma)$ at $K = {config.panel_steps}$")
        plotting.panel_label(ax_p, "a")

        # (b) fitted smoothing level against the number of steps; unresolved fits
        # (p_K already flat on the whole grid) are drawn as upper limits.
        floor = RESOLUTION * config.sigma_min
        levels = builtin.groupby(["schedule", "steps"], sort=True)[["eps_hat", "eps_resolved"]].first().reset_index()
        for i, name in enumerate(schedules):
            d = levels[levels["schedule"] == name].sort_values("steps")
            color = plotting.schedule_color(name)
            jitter = 0.13 * (i - (len(schedules) - 1) / 2)  # upper limits coincide: spread them
            ok = d[d["eps_resolved"].astype(bool)]
            ax_e.plot(ok["steps"], ok["eps_hat"], color=color, marker="o")
            low = d[~d["eps_resolved"].astype(bool)]
            if not low.empty:
                ax_e.plot(
                    low["steps"] + jitter,
                    [floor] * len(low),
                    linestyle="none",
                    marker="v",
                    markerfacecolor="white",
                    markeredgecolor=color,
                    markersize=5,
                )
        for name in names:
            d = frame[frame["plugin"] == name].groupby("steps", dropna=False)[["eps_hat", "eps_resolved"]].first()
            d = d.reset_index()
            ax_e.plot(
                d["steps"].fillna(config.panel_steps),
                np.where(d["eps_resolved"].astype(bool), d["eps_hat"], floor),
                color=plugins.color(name, names),
                marker="*",
                markersize=7,
                linestyle="-" if len(d) > 1 else "none",
            )
        if not levels["eps_resolved"].astype(bool).all():
            ax_e.axhspan(1e-300, floor, color="0.9", zorder=0, linewidth=0)
            ax_e.text(
                0.03,
                0.03,
                rf"unresolved: $\hat\varepsilon < {RESOLUTION:g}\,\sigma_{{\min}}$ (open markers)",
                transform=ax_e.transAxes,
                ha="left",
                va="bottom",
                fontsize=7,
                color="0.3",
            )
        ax_e.set_yscale("log")
        ymax = float(frame["eps_hat"].max()) * 2.0
        drawn = frame["eps_hat"].to_numpy(float)
        drawn = drawn[np.isfinite(drawn) & (drawn > 0)]
        # the shaded unresolved strip needs the floor in view; otherwise the axis ends just below the data
        if frame["eps_resolved"].dropna().astype(bool).all() and drawn.size:
            ax_e.set_ylim(float(drawn.min()) / 2.0, ymax)
        else:
            ax_e.set_ylim(floor / 4.0, ymax)
        ax_e.set_xlabel("Newton–Schulz steps $K$")
        ax_e.set_ylabel(r"fitted smoothing level $\hat\varepsilon$")
        ks = sorted({int(k) for k in levels["steps"]})
        ax_e.set_xticks(ks)
        plotting.panel_label(ax_e, "b")

        fig.legend(handles=handles, loc="outside upper center", ncols=3)
        stem = out_dir / "transfer_functions"
        plotting.save_figure(fig, stem)
    return [stem]
