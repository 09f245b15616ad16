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
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D

import matfun

from .. import plotting
from ..metrics import smoothing_level

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
    def quick(cls) -> "Config":
        # Only fewer step counts: the σ grid stays dense (a scalar map is cheap to evaluate).
        return cls(steps=(2, 5))


def cells(config: Config) -> list[dict]:
    return [{"schedule": s, "steps": k} for s in config.schedules for k in config.steps]


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
    del seed  # deterministic: no randomness
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
        at_k = frame[frame["steps"] == config.panel_steps]
        ax_p.axhline(1.0, color=plotting.REFERENCE_COLOR, linestyle=":", linewidth=1.0, zorder=3)
        handles = []
        for name in schedules:
            d = at_k[at_k["schedule"] == name].sort_values("sigma")
            if d.empty:
                continue
            color = plotting.schedule_color(name)
            # Thin: the tuned schedules swing faster than a pixel near σ = 1 and draw a band there.
            (h,) = ax_p.plot(d["sigma"], d["p"], color=color, linewidth=0.6, label=plotting.schedule_label(name))
            ax_p.plot(d["sigma"], d["smoothed_fit"], color=color, linestyle=(0, (4, 2)), linewidth=1.3, zorder=4)
            handles.append(h)
        handles += [
            Line2D([], [], color="0.3", linestyle=(0, (4, 2)), linewidth=1.3,
                   label=r"best smoothed polar $\sigma/\sqrt{\sigma^2+\hat\varepsilon^2}$"),
            Line2D([], [], color=plotting.REFERENCE_COLOR, linestyle=":", linewidth=1.0, label="exact polar"),
        ]
        ax_p.set_xscale("log")
        ax_p.set_xlim(config.sigma_min, config.sigma_max)
        top = max(1.3, float(at_k["p"].max()) * 1.05) if not at_k.empty else 1.3
        ax_p.set_ylim(0.0, top)
        ax_p.set_xlabel(r"normalised singular value $\sigma = \sigma_i(G)\,/\,\|G\|_F$")
        ax_p.set_ylabel(rf"transfer function $p_K(\sigma)$ at $K = {config.panel_steps}$")
        plotting.panel_label(ax_p, "a")

        # (b) fitted smoothing level against the number of steps; unresolved fits
        # (p_K already flat on the whole grid) are drawn as upper limits.
        floor = RESOLUTION * config.sigma_min
        levels = frame.groupby(["schedule", "steps"], sort=True)[["eps_hat", "eps_resolved"]].first().reset_index()
        for i, name in enumerate(schedules):
            d = levels[levels["schedule"] == name].sort_values("steps")
            color = plotting.schedule_color(name)
            jitter = 0.13 * (i - (len(schedules) - 1) / 2)  # upper limits coincide: spread them
            ok = d[d["eps_resolved"].astype(bool)]
            ax_e.plot(ok["steps"], ok["eps_hat"], color=color, marker="o")
            low = d[~d["eps_resolved"].astype(bool)]
            if not low.empty:
                ax_e.plot(low["steps"] + jitter, [floor] * len(low), linestyle="none", marker="v",
                          markerfacecolor="white", markeredgecolor=color, markersize=5)
        if not levels["eps_resolved"].astype(bool).all():
            ax_e.axhspan(1e-300, floor, color="0.9", zorder=0, linewidth=0)
            ax_e.text(0.03, 0.03, rf"unresolved: $\hat\varepsilon < {RESOLUTION:g}\,\sigma_{{\min}}$ (open markers)",
                      transform=ax_e.transAxes, ha="left", va="bottom", fontsize=7, color="0.3")
        ax_e.set_yscale("log")
        ymax = float(levels["eps_hat"].max()) * 2.0
        ax_e.set_ylim(floor / 4.0, ymax)
        ax_e.set_xlabel("Newton–Schulz steps $K$")
        ax_e.set_ylabel(r"fitted smoothing level $\hat\varepsilon$")
        ks = sorted(set(int(k) for k in levels["steps"]))
        ax_e.set_xticks(ks)
        plotting.panel_label(ax_e, "b")

        fig.legend(handles=handles, loc="outside upper center", ncols=3)
        stem = out_dir / "transfer_functions"
        plotting.save_figure(fig, stem)
    return [stem]
