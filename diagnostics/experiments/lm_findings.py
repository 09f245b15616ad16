"""The ``lm`` experiment's summaries and findings: per-run statistics, best rates, the verdict
on each claim (``lm.md``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .lm_optimizers import _FAMILY_LABELS, label, parse_optimizer

if TYPE_CHECKING:
    from .lm import Config


# ----------------------------------------------------------------------------- summaries


def split_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(training rows, step-time benchmark per optimizer or None)``.

    The benchmark frame has ``step_ms``, ``step_q25``, ``step_q75``, ``orth_ms`` and
    ``rest_ms`` (medians and quartiles over the interleaved rounds).
    """
    if "benchmark" not in frame.columns or frame["benchmark"].isna().all():
        return frame, None
    bench = frame[frame["benchmark"].notna()]
    step = bench.groupby("optimizer")["bench_step_ms"]
    times = pd.DataFrame(
        {
            "step_ms": step.median(),
            "step_q25": step.quantile(0.25),
            "step_q75": step.quantile(0.75),
            "orth_ms": bench.groupby("optimizer")["bench_orth_ms"].median(),
            "rest_ms": (bench["bench_step_ms"] - bench["bench_orth_ms"]).groupby(bench["optimizer"]).median(),
        }
    )
    training = frame[frame["benchmark"].isna()]
    # bool columns read back as object next to the benchmark's empty cells
    return training.astype({"diverged": bool, "full_first": bool}), times


def summarise(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """``(training rows, per-(optimizer, lr) statistics of best_rates, benchmarked?)``; step times
    come from the interleaved benchmark when it ran, else from the training runs."""
    training, times = split_frame(frame)
    stats = best_rates(run_summaries(training))
    if times is not None:
        for col in times.columns:
            stats[col] = stats["optimizer"].map(times[col])
    return training, stats, times is not None


def run_summaries(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run (optimizer, lr, seed, replica) with its per-run columns."""
    cols = [
        "optimizer",
        "lr",
        "seed",
        "replica",
        "family",
        "ns_steps",
        "tile",
        "full_first",
        "final_val_loss",
        "diverged",
        "diverged_step",
        "step_ms_median",
        "step_ms_q25",
        "step_ms_q75",
        "orth_ms_median",
        "rest_ms_median",
        "lr_source",
    ]
    runs = frame.groupby(["optimizer", "lr", "seed", "replica"], sort=True)
    out = runs[[c for c in cols if c not in ("optimizer", "lr", "seed", "replica")]].first().reset_index()
    out["alignment"] = runs["alignment"].mean().to_numpy()
    out["alignment_ns"] = runs["alignment_ns"].mean().to_numpy()
    out["final_opt_s"] = runs["opt_ms_cum"].max().to_numpy() / 1e3
    return out


def best_rates(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (optimizer, lr): mean/std over seeds; ``best`` marks the chosen lr of each optimizer.

    The chosen lr has the lowest mean final loss among the rates where no seed diverged
    (the lowest rate if every rate diverged somewhere).
    """
    g = runs.groupby(["optimizer", "lr"], sort=True)
    stats = g.agg(
        mean=("final_val_loss", "mean"),
        std=("final_val_loss", "std"),
        n=("final_val_loss", "size"),
        n_diverged=("diverged", "sum"),
        step_ms=("step_ms_median", "median"),
        step_q25=("step_ms_q25", "median"),
        step_q75=("step_ms_q75", "median"),
        orth_ms=("orth_ms_median", "median"),
        rest_ms=("rest_ms_median", "median"),
        alignment=("alignment", "mean"),
        alignment_ns=("alignment_ns", "mean"),
        opt_s=("final_opt_s", "median"),
        family=("family", "first"),
        ns_steps=("ns_steps", "first"),
        tile=("tile", "first"),
        full_first=("full_first", "first"),
        lr_source=("lr_source", "first"),
    ).reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    stats["best"] = False
    for _, d in stats.groupby("optimizer"):
        ok = d[d["n_diverged"] == 0]
        pick = ok["mean"].idxmin() if len(ok) else d["lr"].idxmin()
        stats.loc[pick, "best"] = True
    return stats


# ----------------------------------------------------------------------------- findings


def compare(stats: pd.DataFrame, a: str, b: str, tol: float) -> dict | None:
    """``a`` against ``b`` at their chosen rates: difference of mean final losses, its standard
    error ``√(s_a²/n_a + s_b²/n_b)`` and a verdict.

    ``a`` is *better* (*worse*) when its mean is lower (higher) by more than both twice the
    standard error and ``tol`` nats/byte; otherwise the two are *indistinguishable* here.
    ``None`` when either is missing or diverged at every rate.
    """
    best = stats[stats["best"]].set_index("optimizer")
    if a not in best.index or b not in best.index:
        return None
    ra, rb = best.loc[a], best.loc[b]
    if not (np.isfinite(ra["mean"]) and np.isfinite(rb["mean"])):
        return None
    diff = float(ra["mean"] - rb["mean"])
    # one seed has no spread: the standard error is unknown and only |Δ| > tol can count
    spread = ra["n"] >= 2 and rb["n"] >= 2
    se = math.sqrt(ra["std"] ** 2 / ra["n"] + rb["std"] ** 2 / rb["n"]) if spread else math.nan
    margin = max(2 * se, tol) if spread else tol
    if diff < -margin:
        verdict = "better"
    elif diff > margin:
        verdict = "worse"
    else:
        verdict = "indistinguishable"
    return {
        "diff": diff,
        "se": se,
        "verdict": verdict,
        "time_ratio": float(ra["step_ms"] / rb["step_ms"]),
        "orth_ratio": float(ra["orth_ms"] / rb["orth_ms"]) if rb["orth_ms"] > 0 else math.nan,
    }


def findings(frame: pd.DataFrame, config: Config) -> str:
    """The markdown table (per optimizer at its chosen rate) and a verdict on each claim."""
    frame, stats, benchmarked = summarise(frame)
    best = stats[stats["best"]].set_index("optimizer")
    opts = [o for o in config.parsed() if o.name in best.index]
    tol = config.match_tol
    device = str(frame["device"].iloc[0]) if "device" in frame.columns else "cpu"
    ref = f"muon_k{config.ns_steps}"
    lines = [
        "# lm: byte-level GPT, final validation loss (nats/byte)",
        "",
        f"GPT {config.depth} layers × {config.width} wide, context {config.context}, batch {config.batch_size}, "
        f"{config.steps} steps ({config.steps * config.batch_size * config.context / 1e6:.2f} M tokens), "
        f"{config.positions} positions, device {device}; corpus `{config.corpus or 'stdlib'}` "
        f"({int(frame['corpus_files'].iloc[0])} files, {int(frame['corpus_bytes'].iloc[0]):,} bytes, "
        f"sha256 `{frame['corpus_sha256'].iloc[0][:16]}…`, Python {frame['python_version'].iloc[0]}); "
        f"byte-unigram entropy **{float(frame['unigram_entropy'].iloc[0]):.3f}** nats/byte. "
        f"Seeds per optimizer: {len(config.seeds)} (× store seeds {sorted(set(frame['seed'].astype(int)))}). "
        f"Warm-up {config.warmup_frac:.0%} of the steps (linear), then cosine decay; weight decay "
        f"{config.weight_decay:g}.",
        "",
        f"| optimizer | lr (source) | final val loss, mean ± std (n) | Δ vs Muon K={config.ns_steps} | "
        "step ms, median [IQR] | orth. ms | rest ms | alignment (NS input) | diverged runs (all rates) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref_mean = float(best.loc[ref, "mean"]) if ref in best.index else math.nan
    for o in opts:
        r = best.loc[o.name]
        n_div = int(stats[stats["optimizer"] == o.name]["n_diverged"].sum())
        n_runs = int(stats[stats["optimizer"] == o.name]["n"].sum())
        spread = f" ± {r['std']:.4f}" if r["n"] >= 2 else ""
        loss = f"{r['mean']:.4f}{spread} ({int(r['n'])})" if np.isfinite(r["mean"]) else "diverged"
        align = f"{r['alignment']:.3f}" + (f" ({r['alignment_ns']:.3f})" if np.isfinite(r["alignment_ns"]) else "")
        lines.append(
            f"| {label(o)} | {r['lr']:g} ({r['lr_source']}) | {loss} | {r['mean'] - ref_mean:+.4f} | "
            f"{r['step_ms']:.2f} [{r['step_q25']:.2f}, {r['step_q75']:.2f}] | {r['orth_ms']:.2f} | "
            f"{r['rest_ms']:.2f} | {align} | {n_div}/{n_runs} |"
        )
    lines += [
        "",
        f"Differences Δ = first − second in final validation loss (nats/byte) ± its standard error; "
        f"*better*/*worse*: |Δ| exceeds both 2 SE and {tol:g} nats/byte, else *indistinguishable* "
        "at this size. Step ratios are of median optimizer-step times"
        + (
            f", measured on the same gradients with the optimizers interleaved ({config.timing_rounds} rounds)"
            if benchmarked
            else ", from the training runs (not interleaved)"
        )
        + ".",
        "",
    ]

    def claim(title: str, a: str, b: str, holds: Callable[[dict], bool], rule: str) -> None:
        c = compare(stats, a, b, tol)
        if c is None:
            lines.append(f"- **{title}**: not measured ({a} or {b} missing or diverged at every rate).")
            return
        verdict = "holds" if holds(c) else "does not hold"
        delta = (
            f"Δ = {c['diff']:+.4f} ± {c['se']:.4f}"
            if math.isfinite(c["se"])
            else f"Δ = {c['diff']:+.4f} (one seed: no standard error, only |Δ| > {tol:g} counts)"
        )
        orth = f", orthogonalisation {c['orth_ratio']:.2f}×" if math.isfinite(c["orth_ratio"]) else ""
        lines.append(
            f"- **{title}** → **{verdict}** here ({rule}). {label(parse_optimizer(a))} vs "
            f"{label(parse_optimizer(b))}: {delta}, loss {c['verdict']}; "
            f"optimizer step {c['time_ratio']:.2f}×{orth}."
        )

    def not_worse(c: dict) -> bool:
        return c["verdict"] != "worse"

    names = set(best.index)
    for o in opts:
        if o.family == "himuon":
            claim(
                f"{label(o)} keeps training close to Muon K={config.ns_steps} while the step gets cheaper",
                o.name,
                ref,
                lambda c: not_worse(c) and c["time_ratio"] < 1,
                "loss not worse and step-time ratio < 1",
            )
    for fam in ("muon2", "muon2f"):
        k5, k3 = f"{fam}_k{config.ns_steps}", f"{fam}_k3"
        if k5 in names:
            claim(
                f"{_FAMILY_LABELS[fam]} outperforms Muon (K={config.ns_steps} both)",
                k5,
                ref,
                lambda c: c["verdict"] == "better",
                "loss better",
            )
        if k3 in names:
            claim(
                f"{_FAMILY_LABELS[fam]} at K=3 matches Muon at K={config.ns_steps} (40% fewer NS steps)",
                k3,
                ref,
                not_worse,
                "loss not worse",
            )
    if "muon_k3" in names:
        claim(
            f"Control: plain Muon at K=3 matches K={config.ns_steps}",
            "muon_k3",
            ref,
            not_worse,
            "loss not worse; if it holds, K=3 suffices without preconditioning, so Muon² K=3 matching Muon "
            "K=5 says nothing about preconditioning",
        )
    if "adamw" in names:
        claim("Sanity: Muon beats AdamW", ref, "adamw", lambda c: c["verdict"] == "better", "loss better")
    return "\n".join(lines) + "\n"
