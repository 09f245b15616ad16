"""Muon²: what second-moment preconditioning does to realistic momenta and to NS convergence.

For momenta ``M`` and second moments ``V`` recorded along short real training runs
(:mod:`diagnostics.streams`: a teacher–student linear layer and the weights of a
small MLP), the experiment compares three matrices NS can be applied to:

* ``none``: ``M`` itself (Muon);
* ``full``: ``M̃ = M ⊘ (√V + ε)`` (Muon²);
* ``factorized``: ``M̃ = M ⊘ (√V̂ + ε)`` with ``V̂ = r cᵀ / sum(c)``, ``r``/``c`` the
  row/column sums of ``V`` (Muon²-F).  The EMA is linear, so these row/column sums
  equal exactly the EMAs of ``rowsum(G²)``/``colsum(G²)`` Muon²-F keeps: no second
  training run is needed.

Alignment convention (the choice that matters): like Muon², the alignment of the
``K``-step iterate is measured against the polar factor *of the matrix NS is applied
to*, ``cos(NS_K(M̃), polar(M̃))``; for ``none`` that is ``cos(NS_K(M), polar(M))``.
This measures how fast NS converges on each input, not how close the preconditioned
update is to Muon's direction; the latter is recorded separately as
``direction_vs_polar_M = cos(polar(M̃), polar(M))`` (preconditioning changes the target
itself).  The NS map runs in float32 on the requested device; references (SVDs,
polar factors) are float64 (:mod:`diagnostics.metrics`), with the float32 rank
cut-off, so rank-deficient momenta (dead ReLU units) use their partial isometry.

Steps to a threshold ``τ``: the smallest ``K ≤ max_steps`` with alignment ``≥ τ``
(NaN when never reached: Jordan's quintic schedule plateaus near 0.986 on these
inputs, so 0.99 is out of its reach at any ``K``).  The reduction is
``1 − K_precond / K_none`` per matrix, to compare with Muon²'s "about 40% fewer
NS steps".

What the quick run shows (CPU, seed 0): preconditioning cuts the condition number
of the teacher–student and MLP-input momenta 3–16× (e.g. 134 → 8), but not that of
the hidden-layer momentum ``fc2`` (numerically rank deficient through dead ReLU
units: ~4e4 before and after, sometimes higher), and there it also turns the
direction far from Muon's (``direction_vs_polar_M`` ≈ 0.25 for ``full``: entries with
``V ≈ 0`` are blown up).  Cubic NS needs 4–36% fewer steps (median ≈ 25%) to reach
0.99/0.999, short of the published 40%; Polar Express, tuned for a wide σ range,
gains nothing on most matrices; Jordan never reaches 0.99.

Figure ``preconditioning``: (a) one small panel per recorded parameter (the
teacher–student layer ``W``, the MLP's ``fc1`` and ``fc2``; title: name and shape):
normalised singular values ``σ_i/σ_1`` against the relative index, colour = the
variant (the matrix NS is applied to), line style = the training step the momentum
was recorded at; values below ``1e-8`` (numerically rank-deficient ``fc2``) are drawn
on a labelled ``1e-8`` line; (b) condition number ``σ_1/σ_r`` (over the numerical
rank) per parameter and variant, open markers for the earlier recording, filled
for the last; (c) ``1 − alignment`` against ``K`` (median over matrices) per
schedule (line style) and variant (colour), thresholds dotted, values below
``1e-7`` (the resolution of a float32 cosine) drawn on a labelled ``1e-7`` line;
(d) the median step reduction per schedule and threshold with the published 40%
dashed (bars labelled n/N: how many of the N matrices reached the threshold with
both variants).
``steps_to_threshold.md`` next to the figure lists the per-matrix step counts.

Rows (column ``record`` tells the kind):

* ``spectrum``: ``matrix``, ``param``, ``step``, ``variant``, ``index``,
  ``sigma_normalised`` (``σ_i/σ_1``);
* ``summary``: ``matrix``, ``param``, ``step``, ``variant``, ``H``, ``W``, ``rank``,
  ``condition_number``, ``stable_rank`` (``‖·‖_F²/‖·‖₂²``), ``sigma_min_frob``
  (``σ_r/‖·‖_F``, the smallest normalised singular value NS starts from),
  ``direction_vs_polar_M``;
* ``alignment``: ``matrix``, ``variant``, ``schedule``, ``steps`` (K), ``alignment``;
* ``steps_to``: ``matrix``, ``variant``, ``schedule``, ``threshold``,
  ``steps_needed`` (NaN: not reached), ``best_alignment`` (max over K),
  ``reduction`` (``1 − K/K_none``; NaN for ``none`` or when either is not reached).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

import matfun

from .. import metrics, plotting, streams
from ..store import cell_seed
from ..threads import torch_threads

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType

NAME = "preconditioning"
DESCRIPTION = (
    "Muon2: spectra, condition numbers and NS steps-to-alignment of realistic momenta with and without M/(sqrt V+eps)"
)

VARIANTS = ("none", "full", "factorized")
VARIANT_LABELS = {
    "none": "M (Muon)",
    "full": r"$M \oslash (\sqrt{V}+\varepsilon)$ (Muon²)",
    "factorized": r"factorised $\hat V$ (Muon²-F)",
}
VARIANT_COLORS = {
    "none": plotting.OKABE_ITO["black"],
    "full": plotting.OKABE_ITO["blue"],
    "factorized": plotting.OKABE_ITO["orange"],
}
SCHEDULE_STYLES: dict[str, LineStyleType] = {"cubic": "-", "jordan": "--", "you": "-.", "polar_express": ":"}
PUBLISHED_REDUCTION = 0.40


@dataclasses.dataclass(frozen=True)
class Config:
    """Streams × recorded steps; NS schedules up to ``max_steps``."""

    streams: tuple[str, ...] = ("teacher_student", "mlp")
    stream_steps: int = 500
    record_steps: tuple[int, ...] = (50, 200, 499)
    width: int = 512
    schedules: tuple[str, ...] = ("cubic", "jordan", "polar_express")
    max_steps: int = 40
    thresholds: tuple[float, ...] = (0.99, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        unknown = [s for s in self.streams if s not in ("teacher_student", "mlp")]
        if unknown:
            raise ValueError(f"unknown stream(s) {unknown}; valid: teacher_student, mlp")
        bad = [s for s in self.schedules if s not in matfun.SCHEDULES]
        if bad:
            raise ValueError(f"unknown schedule(s) {bad}; valid: {sorted(matfun.SCHEDULES)}")
        if not self.record_steps or max(self.record_steps) >= self.stream_steps or min(self.record_steps) < 0:
            raise ValueError("record_steps must lie in [0, stream_steps)")
        if self.max_steps < 1 or not all(0 < t < 1 for t in self.thresholds) or self.eps < 0 or self.width < 4:
            raise ValueError("need max_steps >= 1, thresholds in (0, 1), eps >= 0, width >= 4")

    @classmethod
    def quick(cls) -> Config:
        return cls(stream_steps=80, record_steps=(20, 79), width=128, max_steps=25)


def cells(config: Config) -> list[dict]:
    return [{"stream": s} for s in config.streams]


def _samples(config: Config, kind: str, seed: int) -> list:
    w = config.width
    if kind == "teacher_student":
        run = streams.teacher_student_stream(
            config.stream_steps, record_steps=config.record_steps, d_in=w, d_out=w // 2, seed=seed
        )
    else:
        run = streams.mlp_stream(
            config.stream_steps,
            record_steps=config.record_steps,
            sizes=(64, w, w, 10),
            record=["fc1.weight", "fc2.weight"],
            seed=seed,
        )
    return list(run)


def factorized_second_moment(V: np.ndarray) -> np.ndarray:
    """Muon²-F's ``V̂ = r cᵀ / sum(c)`` from the row and column sums of ``V``."""
    r, c = V.sum(axis=-1), V.sum(axis=-2)
    total = c.sum()
    return np.outer(r, c) / total if total > 0 else np.zeros_like(V)


def _steps_to(curve: np.ndarray, threshold: float) -> float:
    hit = np.flatnonzero(curve >= threshold)
    return float(hit[0]) if hit.size else float("nan")


def run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    with torch_threads(1):
        return _run_cell(config, cell, device, seed)


def _run_cell(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    s = cell_seed(seed, cell) % (2**31)
    rows: list[dict] = []
    for sample in _samples(config, cell["stream"], s):
        M, V = np.asarray(sample.M, np.float64), np.asarray(sample.V, np.float64)
        inputs = {
            "none": M,
            "full": np.asarray(matfun.precondition(M, V, config.eps)),
            "factorized": np.asarray(matfun.precondition(M, factorized_second_moment(V), config.eps)),
        }
        label = f"{cell['stream']}:{sample.name}@{sample.step}"
        base = {"matrix": label, "param": sample.name, "step": int(sample.step)}
        polar_M = None
        needed: dict[tuple[str, str, float], float] = {}
        for variant, X64 in inputs.items():
            X = torch.as_tensor(X64, dtype=torch.float32, device=device)
            ref = metrics.reference(X)  # float64 SVD, float32 rank cut-off
            S = ref.S[ref.keep]
            if polar_M is None:
                polar_M = ref.P
            rows += [
                {**base, "record": "spectrum", "variant": variant, "index": i, "sigma_normalised": v}
                for i, v in enumerate(ref.S / ref.S[0])
            ]
            rows.append(
                {
                    **base,
                    "record": "summary",
                    "variant": variant,
                    "H": X64.shape[0],
                    "W": X64.shape[1],
                    "rank": int(ref.rank),
                    "condition_number": float(S[0] / S[-1]),
                    "stable_rank": float(np.sum(ref.S**2) / ref.S[0] ** 2),
                    "sigma_min_frob": float(S[-1] / np.sqrt(np.sum(ref.S**2))),
                    "direction_vs_polar_M": float(metrics.cosine(ref.P, polar_M)),
                }
            )
            for schedule in config.schedules:
                ns = matfun.NewtonSchulz(config.max_steps, schedule)  # float32 on the device, as X
                curve = np.asarray(metrics.per_step(metrics.alignment, ns.iterates(X), ref), dtype=np.float64)
                rows += [
                    {
                        **base,
                        "record": "alignment",
                        "variant": variant,
                        "schedule": schedule,
                        "steps": k,
                        "alignment": float(a),
                    }
                    for k, a in enumerate(curve)
                ]
                for tau in config.thresholds:
                    k = _steps_to(curve, tau)
                    needed[(variant, schedule, tau)] = k
                    k0 = needed[("none", schedule, tau)]
                    rows.append(
                        {
                            **base,
                            "record": "steps_to",
                            "variant": variant,
                            "schedule": schedule,
                            "threshold": tau,
                            "steps_needed": k,
                            "best_alignment": float(curve.max()),
                            "reduction": float(1.0 - k / k0)
                            if variant != "none" and np.isfinite(k) and np.isfinite(k0) and k0 > 0
                            else float("nan"),
                        }
                    )
    return pd.DataFrame(rows)


def steps_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per matrix, schedule and threshold: steps needed for each variant and the reductions."""
    st = frame[frame["record"] == "steps_to"]
    table = st.pivot_table(
        index=["matrix", "schedule", "threshold"],
        columns="variant",
        values="steps_needed",
        aggfunc="first",
        dropna=False,
    )
    red = st[st["variant"] != "none"].pivot_table(
        index=["matrix", "schedule", "threshold"], columns="variant", values="reduction", aggfunc="first", dropna=False
    )
    red.columns = [f"reduction_{c}" for c in red.columns]
    return table.join(red).reset_index()


def _write_table(table: pd.DataFrame, path: Path) -> None:
    def fmt(v: float, pct: bool = False) -> str:
        if not np.isfinite(v):
            return "—"
        return f"{100 * v:.0f}%" if pct else f"{int(v)}"

    lines = [
        "| matrix | schedule | threshold | K none | K full | K factorised | reduction full | reduction fact. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {matrix_label(r['matrix'])} | {r['schedule']} | {r['threshold']:g} | {fmt(r.get('none', np.nan))} | "
            f"{fmt(r.get('full', np.nan))} | {fmt(r.get('factorized', np.nan))} | "
            f"{fmt(r.get('reduction_full', np.nan), True)} | {fmt(r.get('reduction_factorized', np.nan), True)} |"
        )
    lines.append("\n— : threshold not reached within max_steps (or no baseline to compare with).")
    path.write_text("\n".join(lines) + "\n")


_SHORT_SCHEDULE = {"cubic": "cubic", "jordan": "Jordan", "you": "You", "polar_express": "PE"}
_STREAM_LABELS = {"teacher_student": "teacher–student", "mlp": "MLP"}
_STEP_STYLES: list[LineStyleType] = ["-", (0, (4, 1.5)), (0, (1, 1)), (0, (4, 1, 1, 1))]  # last recorded step solid
#: Values below these are drawn on the floor line (log axes): rank-deficient spectra, float32 cosines.
SPECTRUM_FLOOR, ALIGNMENT_FLOOR = 1e-8, 1e-7


def _parse_matrix(matrix: str) -> tuple[str, str, int]:
    """``"teacher_student:weight@79"`` → ``("teacher_student", "weight", 79)``."""
    stream, rest = matrix.split(":", 1)
    name, step = rest.rsplit("@", 1)
    return stream, name, int(step)


def parameter_label(stream: str, name: str) -> str:
    """Display name of a recorded parameter: ``teacher–student W``, ``MLP fc1``."""
    short = name.replace(".weight", "") if name != "weight" else "W"
    return f"{_STREAM_LABELS.get(stream, stream)} {short}"


def matrix_label(matrix: str, sep: str = ", ") -> str:
    """Display name of a recorded matrix: ``"teacher_student:weight@79"`` → ``teacher–student W, step 79``."""
    stream, name, step = _parse_matrix(matrix)
    return f"{parameter_label(stream, name)}{sep}step {step}"


def plot(frame: pd.DataFrame, config: Config, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    variants = [v for v in VARIANTS if v in set(frame["variant"])]
    spec = frame[frame["record"] == "spectrum"]
    summ = frame[frame["record"] == "summary"]
    params = sorted({_parse_matrix(m)[:2] for m in summ["matrix"]}, key=lambda sp: (sp[0] != "teacher_student", sp))
    shapes = {_parse_matrix(m)[:2]: (int(h), int(w)) for m, h, w in summ[["matrix", "H", "W"]].itertuples(index=False)}
    recorded = sorted({_parse_matrix(m)[2] for m in summ["matrix"]})
    last = recorded[-1]
    step_style = {st: _STEP_STYLES[(len(recorded) - 1 - i) % len(_STEP_STYLES)] for i, st in enumerate(recorded)}
    with plotting.style():
        fig = plotting.figure("double", 5.6)
        fig.clear()
        subfigures = fig.subfigures(2, 1, height_ratios=(1.0, 1.25))
        assert isinstance(subfigures, np.ndarray)  # more than one subfigure: an array of them
        top, bottom = subfigures
        *spectra_axes, ax_c = top.subplots(1, len(params) + 1, width_ratios=[1.0] * len(params) + [1.15])
        ax_a, ax_r = bottom.subplots(1, 2)

        # (a) normalised spectra: one panel per parameter, colour = variant, line style = recorded step.
        for k, (ax, (stream, name)) in enumerate(zip(spectra_axes, params)):
            if k:
                ax.sharey(spectra_axes[0])
                ax.tick_params(labelleft=False)
            mine = spec[[_parse_matrix(m)[:2] == (stream, name) for m in spec["matrix"]]]
            floored = False
            for (matrix, variant), d in mine.groupby(["matrix", "variant"], sort=True):
                d = d.sort_values("index")
                y = d["sigma_normalised"].to_numpy(float)
                floored |= bool(np.any(y < SPECTRUM_FLOOR))
                ax.plot(
                    d["index"].to_numpy(float) / max(len(d) - 1, 1),
                    np.maximum(y, SPECTRUM_FLOOR),
                    color=VARIANT_COLORS[variant],
                    linestyle=step_style[_parse_matrix(matrix)[2]],
                    linewidth=1.0,
                )
            if floored:
                ax.axhline(SPECTRUM_FLOOR, color="0.5", linewidth=0.6, linestyle=":")
                ax.text(
                    0.03,
                    SPECTRUM_FLOOR * 2,
                    r"$<10^{-8}$ drawn here",
                    transform=ax.get_yaxis_transform(),
                    fontsize=6,
                    color="0.35",
                    va="bottom",
                )
            h, w = shapes[(stream, name)]
            ax.set_title(f"{parameter_label(stream, name)}, {h}×{w}", fontsize=6, loc="right")
            ax.set_yscale("log")
            ax.set_xlim(0, 1)
            ax.set_xlabel(r"$(i-1)/(r-1)$")
        spectra_axes[0].set_ylim(SPECTRUM_FLOOR / 3, 2.0)
        spectra_axes[0].set_ylabel(r"normalised singular value $\sigma_i/\sigma_1$")
        spectra_axes[0].legend(
            handles=[
                Line2D([], [], color="0.3", linestyle=step_style[st], linewidth=1.0, label=f"step {st}")
                for st in recorded
            ],
            loc="lower left",
            fontsize=6,
            title="recorded at",
            title_fontsize=6,
        )
        plotting.panel_label(spectra_axes[0], "a")

        # (b) condition numbers: per parameter, colour = variant, filled marker = last recorded step.
        width = 0.6 / max(len(variants), 1)
        for j, variant in enumerate(variants):
            for i, (stream, name) in enumerate(params):
                for st in recorded:
                    row = summ[(summ["variant"] == variant) & (summ["matrix"] == f"{stream}:{name}@{st}")]
                    if row.empty:
                        continue
                    filled = st == last
                    x = i + (j - (len(variants) - 1) / 2) * width + (0.06 if filled else -0.06)
                    ax_c.plot(
                        x,
                        float(row["condition_number"].iloc[0]),
                        marker="o",
                        markersize=4,
                        linestyle="none",
                        color=VARIANT_COLORS[variant],
                        markerfacecolor=VARIANT_COLORS[variant] if filled else "white",
                        markeredgewidth=1.0,
                    )
        ax_c.set_yscale("log")
        ax_c.set_xlim(-0.5, len(params) - 0.5)
        ax_c.set_xticks(
            np.arange(len(params)), [parameter_label(*sp).replace(" ", "\n", 1) for sp in params], fontsize=6
        )
        ax_c.grid(axis="x", visible=False)
        ax_c.set_ylabel(r"condition number $\sigma_1/\sigma_r$")
        ax_c.legend(
            handles=[
                Line2D(
                    [],
                    [],
                    marker="o",
                    linestyle="none",
                    color="0.3",
                    markersize=4,
                    markerfacecolor="0.3" if st == last else "white",
                    label=f"step {st}",
                )
                for st in recorded
            ],
            loc="upper left",
            fontsize=6,
            handletextpad=0.2,
        )
        plotting.panel_label(ax_c, "b")

        # (c) 1 - alignment vs K, median over matrices.
        al = frame[frame["record"] == "alignment"]
        for schedule in config.schedules:
            for variant in variants:
                d = al[(al["schedule"] == schedule) & (al["variant"] == variant)]
                if d.empty:
                    continue
                med = d.groupby("steps")["alignment"].median()
                ax_a.plot(
                    med.index,
                    np.maximum(1.0 - med.to_numpy(), ALIGNMENT_FLOOR),
                    color=VARIANT_COLORS[variant],
                    linestyle=SCHEDULE_STYLES.get(schedule, "-"),
                    linewidth=1.1,
                )
        for tau in config.thresholds:
            ax_a.axhline(1 - tau, color="0.5", linestyle=":", linewidth=0.8)
            ax_a.text(
                config.max_steps - 0.3,
                (1 - tau) / 1.2,
                f"alignment {tau:g}",
                ha="right",
                va="top",
                fontsize=6.5,
                color="0.35",
            )
        ax_a.axhline(ALIGNMENT_FLOOR, color="0.5", linewidth=0.6, linestyle=":")
        ax_a.text(
            0.3,
            ALIGNMENT_FLOOR * 1.3,
            r"$\leq 10^{-7}$ (float32 resolution) drawn here",
            ha="left",
            va="bottom",
            fontsize=6,
            color="0.35",
        )
        ax_a.set_yscale("log")
        ax_a.set_ylim(ALIGNMENT_FLOOR / 3, 1.5)
        ax_a.set_xlim(0, config.max_steps)
        ax_a.set_xlabel("Newton–Schulz steps $K$")
        ax_a.set_ylabel(r"$1 - \cos(\mathrm{NS}_K(\tilde M), \mathrm{polar}(\tilde M))$, median")
        sched_handles = [
            Line2D(
                [],
                [],
                color="0.3",
                linestyle=SCHEDULE_STYLES.get(s, "-"),
                linewidth=1.1,
                label=plotting.schedule_label(s),
            )
            for s in config.schedules
        ]
        ax_a.legend(handles=sched_handles, loc="lower left", fontsize=6.5, bbox_to_anchor=(0.0, 0.12))
        plotting.panel_label(ax_a, "c")

        # (d) median reduction of steps-to-threshold.
        st = frame[(frame["record"] == "steps_to") & (frame["variant"] != "none")]
        groups = [(s, t) for s in config.schedules for t in config.thresholds]
        pre = [v for v in variants if v != "none"]
        width = 0.8 / max(len(pre), 1)
        n_mat = len(set(summ["matrix"]))
        for j, variant in enumerate(pre):
            for g, (schedule, tau) in enumerate(groups):
                d = st[(st["variant"] == variant) & (st["schedule"] == schedule) & np.isclose(st["threshold"], tau)]
                vals = d["reduction"].dropna()
                x = g + (j - (len(pre) - 1) / 2) * width
                if len(vals):
                    y = 100 * float(vals.median())
                    ax_r.bar(x, y, width=width, color=VARIANT_COLORS[variant])
                    ax_r.plot(
                        np.full(len(vals), x), 100 * vals, linestyle="none", marker=".", color="0.25", markersize=3
                    )
                top_ = 100 * float(vals.max()) if len(vals) else 0.0
                ax_r.text(x, max(top_, 0.0) + 1.5, f"{len(vals)}/{n_mat}", ha="center", va="bottom", fontsize=5.5)
        ax_r.axhline(100 * PUBLISHED_REDUCTION, color=plotting.OKABE_ITO["vermillion"], linestyle="--", linewidth=1.0)
        ax_r.text(
            len(groups) - 0.5,
            100 * PUBLISHED_REDUCTION + 1,
            "published ≈40%",
            ha="right",
            va="bottom",
            fontsize=6.5,
            color=plotting.OKABE_ITO["vermillion"],
        )
        ax_r.axhline(0, color="0.3", linewidth=0.6)
        ax_r.set_xticks(
            np.arange(len(groups)), [f"{_SHORT_SCHEDULE.get(s, s)}\n≥ {t:g}" for s, t in groups], fontsize=6
        )
        ax_r.grid(axis="x", visible=False)
        ax_r.set_ylim(
            min(-10.0, float(100 * st["reduction"].min()) - 5 if st["reduction"].notna().any() else -10),
            max(60.0, float(100 * st["reduction"].max()) + 12 if st["reduction"].notna().any() else 60),
        )
        ax_r.set_ylabel("fewer NS steps to threshold (%)\nbars: median; dots: each matrix")
        ax_r.text(
            0.01,
            0.99,
            "n/N: matrices where both variants reach it (PE: Polar Express)",
            transform=ax_r.transAxes,
            fontsize=6,
            color="0.35",
            va="top",
        )
        plotting.panel_label(ax_r, "d")

        handles = [Patch(color=VARIANT_COLORS[v], label=VARIANT_LABELS[v]) for v in variants]
        top.legend(
            handles=handles,
            loc="outside upper center",
            ncols=len(handles),
            title="colour: the matrix NS is applied to (momentum M, second moment V recorded along a "
            "training run at the steps shown)",
            title_fontsize=7,
        )
        stem = out_dir / "preconditioning"
        plotting.save_figure(fig, stem)
    _write_table(steps_table(frame), out_dir / "steps_to_threshold.md")
    return [stem]
