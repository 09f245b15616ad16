"""The ``lm`` experiment's figures (``lm_loss``, ``lm_himuon``, ``lm_k``, ``lm_lr``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import plotting
from .lm_findings import findings, summarise
from .lm_optimizers import _FAMILY_LABELS, QUICK_SWEEP, QUICK_SWEEP_CORPUS, Optimizer, label

if TYPE_CHECKING:
    from .lm import Config


# ----------------------------------------------------------------------------- plot

_FAMILY_COLORS = {
    "adamw": plotting.OKABE_ITO["black"],
    "muon": plotting.OKABE_ITO["blue"],
    "himuon": plotting.OKABE_ITO["bluish_green"],
    "muon2": plotting.OKABE_ITO["vermillion"],
    "muon2f": plotting.OKABE_ITO["orange"],
    "plugin": plotting.OKABE_ITO["reddish_purple"],
}
_NATS = "val. loss (nats/byte)"


def style_of(opt: Optimizer, config: Config) -> dict:
    """Colour by family; within a family, K=3 dotted, smaller tiles dashed, full→T dash-dot."""
    linestyle: str | tuple[int, tuple[int, int]] = "-"
    if opt.family in ("muon", "muon2", "muon2f") and opt.ns_steps != config.ns_steps:
        linestyle = ":"
    elif opt.family == "himuon":
        tiles = sorted({o.tile for o in config.parsed() if o.family == "himuon"})
        linestyle = "-." if opt.full_first else ("--" if opt.tile == tiles[0] else (0, (5, 1)))
    color = _FAMILY_COLORS[opt.family]
    if (
        opt.family == "himuon"
        and not opt.full_first
        and opt.tile != min(o.tile for o in config.parsed() if o.family == "himuon")
    ):
        color = plotting.OKABE_ITO["sky_blue"]
    return {"color": color, "linestyle": linestyle, "label": label(opt)}


def _best_curves(frame: pd.DataFrame, stats: pd.DataFrame) -> dict[str, pd.DataFrame]:
    best = stats[stats["best"]]
    out = {}
    for _, row in best.iterrows():
        d = frame[(frame["optimizer"] == row["optimizer"]) & np.isclose(frame["lr"], row["lr"])]
        out[row["optimizer"]] = d
    return out


def _band(ax, d: pd.DataFrame, x: str, st: dict) -> None:
    """Mean curve over seeds with a min–max band; a cross where a seed diverged."""
    d = d.dropna(subset=["val_loss"])
    g = d.groupby("step")
    xs = g[x].mean().to_numpy()
    ax.plot(
        xs,
        g["val_loss"].mean().to_numpy(),
        color=st["color"],
        linestyle=st["linestyle"],
        linewidth=1.1,
        label=st["label"],
    )
    if g["val_loss"].size().max() > 1:
        ax.fill_between(
            xs,
            g["val_loss"].min().to_numpy(),
            g["val_loss"].max().to_numpy(),
            color=st["color"],
            alpha=0.18,
            linewidth=0,
        )


def _mark_diverged(ax, frame: pd.DataFrame, x: str, st: dict, y: float) -> None:
    div = frame[frame["diverged"].astype(bool)]
    for _, run in div.groupby(["seed", "replica"]):
        ax.plot(run[x].max(), y, marker="x", color=st["color"], markersize=5, clip_on=False, linestyle="none")


def plot(frame: pd.DataFrame, config: Config, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    table = findings(frame, config)
    frame, stats, benchmarked = summarise(frame)
    frame = frame.assign(opt_s_cum=frame["opt_ms_cum"] / 1e3)
    opts = [o for o in config.parsed() if o.name in set(stats["optimizer"])]
    curves = _best_curves(frame, stats)
    entropy = float(frame["unigram_entropy"].iloc[0])
    finite = frame["val_loss"][np.isfinite(frame["val_loss"])]
    top = min(entropy * 1.15, float(finite.max()) * 1.02)
    low = float(finite.min()) * 0.97
    device = str(frame["device"].iloc[0]) if "device" in frame.columns else "cpu"
    stems = []
    with plotting.style():
        # --- lm_loss: vs step, vs optimizer time, step-time split
        fig = plotting.figure("double", 3.2, ncols=3, width_ratios=(1.0, 1.0, 0.9))
        ax_s, ax_t, ax_b = fig.axes
        for opt in opts:
            st = style_of(opt, config)
            d = curves[opt.name]
            for ax, x in ((ax_s, "step"), (ax_t, "opt_s_cum")):
                _band(ax, d, x, st)
                _mark_diverged(ax, d, x, st, top)
        for ax, xl in ((ax_s, "step"), (ax_t, "cumulative optimizer-step time (s)")):
            ax.axhline(entropy, color=plotting.REFERENCE_COLOR, linestyle=":", linewidth=0.8)
            ax.set_ylim(low, top)
            ax.set_xlabel(xl)
            ax.set_ylabel(_NATS)
        ax_s.text(
            0.02,
            entropy,
            f"byte-unigram entropy {entropy:.2f}",
            transform=ax_s.get_yaxis_transform(),
            ha="left",
            va="bottom",
            fontsize=6.5,
        )
        lines = [
            f"GPT {config.depth}×{config.width}, ctx {config.context}, batch {config.batch_size}",
            f"{config.steps} steps, {device}, {frame['corpus_bytes'].iloc[0] / 1e6:.1f} MB corpus",
        ]
        n_seeds = frame.dropna(subset=["replica"]).groupby(["seed", "replica"]).ngroups
        lines += (
            ["band: min–max over seeds"]
            if n_seeds > 1
            else ["one seed (quick run): no seed", "spread, small gaps unresolved"]
        )
        if frame["diverged"].astype(bool).any():
            lines.append("×: diverged")
        # the curves fall steeply near t = 0: the note sits in the empty upper right, above the entropy line
        text = ax_t.text(
            0.98, 0.98, "\n".join(lines), transform=ax_t.transAxes, ha="right", va="top", fontsize=6, color="0.3"
        )
        text.set_in_layout(False)
        ax_t.set_xlim(0, None)
        best = stats[stats["best"]].set_index("optimizer")
        names = [o.name for o in opts][::-1]
        ypos = np.arange(len(names))
        orth = np.nan_to_num(best.loc[names, "orth_ms"].to_numpy(float))
        total = best.loc[names, "step_ms"].to_numpy(float)
        colors = [style_of(o, config)["color"] for o in opts][::-1]
        ax_b.barh(ypos, orth, color=colors, height=0.65, label="orthogonalisation")
        ax_b.barh(ypos, total - orth, left=orth, color=colors, alpha=0.35, height=0.65, label="rest")
        ax_b.errorbar(
            total,
            ypos,
            xerr=[
                total - best.loc[names, "step_q25"].to_numpy(float),
                best.loc[names, "step_q75"].to_numpy(float) - total,
            ],
            fmt="none",
            ecolor="0.3",
            elinewidth=0.6,
            capsize=1.5,
        )
        by_name = {o.name: o for o in opts}
        ax_b.set_yticks(ypos, [label(by_name[n]) for n in names])
        ax_b.grid(axis="y", visible=False)
        ax_b.set_xlabel(
            "ms per optimizer step\nmedian, IQR"
            + (" (interleaved)" if benchmarked else "")
            + "\ndark: orthogonalisation"
        )
        for letter, ax in zip("abc", fig.axes):
            plotting.panel_label(ax, letter)
        fig.legend(*ax_s.get_legend_handles_labels(), loc="outside upper center", ncols=5)
        stems.append(out_dir / "lm_loss")
        plotting.save_figure(fig, stems[-1])

        # --- lm_k: final loss and alignment vs K
        kfams = [f for f in ("muon", "muon2", "muon2f") if (stats[stats["best"]]["family"] == f).any()]
        if kfams:
            fig = plotting.figure("double", 2.5, ncols=2)
            ax_l, ax_a = fig.axes
            for fam in kfams:
                d = stats[stats["best"] & (stats["family"] == fam)].sort_values("ns_steps")
                kw: dict[str, Any] = {
                    "color": _FAMILY_COLORS[fam],
                    "marker": "o",
                    "capsize": 2,
                    "label": _FAMILY_LABELS[fam],
                }
                ax_l.errorbar(d["ns_steps"], d["mean"], yerr=d["std"], **kw)
                ax_a.plot(d["ns_steps"], d["alignment"], color=kw["color"], marker="o", label=kw["label"])
                if fam != "muon":
                    ax_a.plot(
                        d["ns_steps"],
                        d["alignment_ns"],
                        color=kw["color"],
                        marker="s",
                        linestyle="--",
                        label=f"{kw['label']}: vs polar(M ⊘ (√V+ε))",
                    )
            ref = stats[stats["best"] & (stats["family"] == "muon") & (stats["ns_steps"] == config.ns_steps)]
            if len(ref):
                m, s = float(ref["mean"].iloc[0]), float(ref["std"].iloc[0])
                several = np.isfinite(s) and int(ref["n"].iloc[0]) > 1
                if several:
                    ax_l.axhspan(m - s, m + s, color=_FAMILY_COLORS["muon"], alpha=0.12, linewidth=0)
                ax_l.axhline(m, color=_FAMILY_COLORS["muon"], linewidth=0.6, linestyle="--")
                ax_l.text(
                    0.02,
                    m,
                    f"Muon K={config.ns_steps}" + (" ± std" if several else ""),
                    transform=ax_l.get_yaxis_transform(),
                    fontsize=6.5,
                    va="bottom",
                    color=_FAMILY_COLORS["muon"],
                )
            ks = sorted(set(stats["ns_steps"][stats["family"].isin(kfams)].astype(int)))
            for ax in (ax_l, ax_a):
                ax.set_xticks(ks)
                ax.set_xlabel("Newton–Schulz steps K")
            one_seed = bool((stats["n"] <= 1).all())
            ax_l.set_ylabel("final " + _NATS + ("\none seed" if one_seed else "\nmean ± std over seeds"))
            ax_a.set_ylabel(r"alignment $\cos(\Delta W, \mathrm{polar}(M))$" + "\nmean over sampled steps")
            ax_a.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            plotting.panel_label(ax_l, "a")
            plotting.panel_label(ax_a, "b")
            stems.append(out_dir / "lm_k")
            plotting.save_figure(fig, stems[-1])

        # --- lm_himuon: final loss and step time vs tile
        him = stats[stats["best"] & (stats["family"] == "himuon")]
        if len(him):
            fig = plotting.figure("double", 2.5, ncols=2)
            ax_l, ax_t2 = fig.axes
            muon = stats[stats["best"] & (stats["family"] == "muon") & (stats["ns_steps"] == config.ns_steps)]
            for full_first, d in him.groupby("full_first"):
                d = d.sort_values("tile")
                name = "full→T" if full_first else "T from step 0"
                kw2: dict[str, Any] = {
                    "color": _FAMILY_COLORS["himuon"] if not full_first else plotting.OKABE_ITO["reddish_purple"],
                    "marker": "D" if full_first else "s",
                }
                ax_l.errorbar(d["tile"], d["mean"], yerr=d["std"], capsize=2, label=f"HiMuon, {name}", **kw2)
                ax_t2.plot(d["tile"], d["step_ms"], label=f"HiMuon, {name}", **kw2)
            if len(muon):
                m = muon.iloc[0]
                ax_l.axhspan(
                    m["mean"] - m["std"], m["mean"] + m["std"], color=_FAMILY_COLORS["muon"], alpha=0.12, linewidth=0
                )
                ax_l.axhline(
                    m["mean"],
                    color=_FAMILY_COLORS["muon"],
                    linestyle="--",
                    linewidth=0.8,
                    label=f"Muon K={config.ns_steps} (full matrices) ± std",
                )
                ax_t2.axhline(
                    m["step_ms"],
                    color=_FAMILY_COLORS["muon"],
                    linestyle="--",
                    linewidth=0.8,
                    label=f"Muon K={config.ns_steps}",
                )
            tiles = sorted(set(him["tile"].astype(int)))
            for ax in (ax_l, ax_t2):
                ax.set_xscale("log", base=2)
                ax.set_xticks(tiles, [str(t) for t in tiles])
                ax.minorticks_off()
                ax.set_xlabel(f"tile size T (hidden matrices {config.width}×{config.width}…{4 * config.width})")
            ax_l.set_ylabel("final " + _NATS + "\nmean ± std over seeds")
            ax_t2.set_ylabel("optimizer step, median ms")
            ax_t2.set_ylim(0, None)
            ax_l.legend(fontsize=6.5)
            ax_t2.legend(fontsize=6.5)
            plotting.panel_label(ax_l, "a")
            plotting.panel_label(ax_t2, "b")
            stems.append(out_dir / "lm_himuon")
            plotting.save_figure(fig, stems[-1])

        # --- lm_lr: the sweep (this run's rates, or the recorded sweep for recorded rates)
        fig = plotting.figure("double", 2.8, ncols=2, width_ratios=(1.0, 0.45))
        ax, lax = fig.axes
        sweep = _sweep_table(stats, config)
        # the diverged runs' × sit at the ceiling: above the data, and at the byte entropy only if one diverged
        top = float(np.nanmax(sweep["mean"])) if sweep["mean"].notna().any() else entropy
        ceiling = (max(top, entropy) if (sweep["n_diverged"] > 0).any() else top) * 1.03
        for opt in opts:
            d = sweep[sweep["optimizer"] == opt.name].sort_values("lr")
            if d.empty:
                continue
            st = style_of(opt, config)
            ok = d[d["n_diverged"] == 0]
            ax.errorbar(
                ok["lr"],
                ok["mean"],
                yerr=ok["std"],
                color=st["color"],
                linestyle=st["linestyle"],
                marker="o",
                markersize=3,
                capsize=1.5,
                label=st["label"],
            )
            bad = d[d["n_diverged"] > 0]
            ax.plot(bad["lr"], np.full(len(bad), ceiling), "x", color=st["color"], markersize=5, clip_on=False)
            chosen = d[d["best"]]
            ax.plot(
                chosen["lr"], chosen["mean"], "o", markersize=6, markerfacecolor="none", markeredgecolor=st["color"]
            )
        ax.set_xscale("log")
        ax.set_ylim(None, ceiling * 1.01)
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final " + _NATS)
        source = sweep["source"].iloc[0] if len(sweep) else ""
        ax.set_title(source, fontsize=7)
        lax.axis("off")
        handles, labels = ax.get_legend_handles_labels()
        lax.legend(handles, labels, loc="upper left", frameon=False, borderaxespad=0.0)
        key = "open circle: chosen rate" + ("\n×: diverged (any seed)" if (sweep["n_diverged"] > 0).any() else "")
        lax.text(0.0, 0.0, key, transform=lax.transAxes, fontsize=6.5, va="bottom", color="0.3")
        stems.append(out_dir / "lm_lr")
        plotting.save_figure(fig, stems[-1])

    (out_dir / "lm.md").write_text(table)
    return stems


def _sweep_table(stats: pd.DataFrame, config: Config) -> pd.DataFrame:
    """This run's (optimizer, lr) statistics, plus the recorded quick sweep for optimizers run at recorded rates."""
    out = stats.assign(source="this run: every rate of lr_grid")
    recorded = dict(config.lrs)
    if recorded and QUICK_SWEEP:
        rows = []
        for (name, lr), loss in QUICK_SWEEP.items():
            if name in recorded:
                rows.append(
                    {
                        "optimizer": name,
                        "lr": lr,
                        "mean": np.nan if loss is None else loss,
                        "std": 0.0,
                        "n_diverged": int(loss is None),
                        "best": np.isclose(lr, recorded[name]),
                    }
                )
        keep = out[~out["optimizer"].isin(recorded)]
        out = pd.concat([keep, pd.DataFrame(rows)], ignore_index=True)
        out["source"] = f"sweep recorded beforehand (the quick model, first seed; corpus {QUICK_SWEEP_CORPUS[:12]})"
    return out
