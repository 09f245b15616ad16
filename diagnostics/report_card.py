"""The report card of one orthogonaliser: experiments, battery, verdict, HTML and PDF.

Behind ``python -m diagnostics report MODULE:ATTR`` (:mod:`diagnostics.report`).
Runs the map through the experiments that compare maps (``transfer``,
``ns_convergence``, ``precision``, ``duality``, ``scaling``) beside matfun's
Jordan and Polar Express Newton–Schulz, runs the validation battery of
:mod:`matfun.testing`, and writes into ``--out DIR`` (default
``report/<name>``)::

    DIR/report.html   one self-contained page (figures embedded as base64 PNG)
    DIR/report.pdf    the same content (text, tables, figures)
    DIR/results/      the experiments' cell cache (a rerun only recomputes what changed)
    DIR/figures/      the experiments' figures (PDF + PNG)

The card shows the measured transfer function (and whether the map is spectral),
alignment and relative error against the condition number, the bfloat16 floor,
the duality efficiency, time and FLOPs against matfun's own NS in the same run,
the battery's table (each check with its value and threshold) and a short
plain-language verdict.  ``--quick`` uses small matrices (64×128; sizes up to
512 for timing): about 35 s of CPU time for the example map (measured on a
2-core machine), the battery included.

The map's step count ``K``: a factory (``steps -> map``) is evaluated at
:data:`REPORT_STEPS`; a plain callable at its own ``K`` (its ``steps`` attribute, if
any); a map with ``iterates`` at its last step.  The built-in maps are compared
at the same ``K`` (:data:`REPORT_STEPS` when the map's ``K`` is unknown).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
import math
import platform
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import plotting, plugins, runner
from .experiments import get as get_experiment

__all__ = ["COMPARE", "REPORT_STEPS", "Card", "build_report", "render_html", "render_pdf"]

#: Step count a factory plug-in is evaluated at, and the built-ins' K when the plug-in's is unknown.
REPORT_STEPS = 5
#: The built-in schedules every number is compared with.
COMPARE = ("jordan", "polar_express")
#: Condition numbers of the accuracy panel.
KAPPAS = (10.0, 1e3, 1e6)


def _configs(quick: bool) -> dict[str, Any]:
    """Config per experiment: the built-ins cut to :data:`COMPARE` (and quick sizes with ``quick``)."""
    from . import store

    out = {}
    common = {"schedules": COMPARE}
    for name, changes in {
        "transfer": {**common, "steps": (2, REPORT_STEPS, 8), "panel_steps": REPORT_STEPS},
        "ns_convergence": {**common, "condition_numbers": KAPPAS, "tiles": (32,), "max_steps": 12},
        "precision": {**common, "condition_numbers": (10.0, 1e3), "max_steps": 12},
        "duality": {**common, "tiles": (32,), "max_steps": 12, "stream_steps": 50},
        # five sizes: the slopes are fitted on the top four (scaling.MIN_FIT_SIZES); with three every
        # slope in the cost legend read "—"
        "scaling": {
            "ns": (128, 192, 256, 384, 512),
            "tiles": (64,),
            "warmup": 1,
            "repeats": 3,
            "min_time": 0.01,
            "steps": REPORT_STEPS,
        }
        if quick
        else {"steps": REPORT_STEPS},
    }.items():
        module = get_experiment(name)
        base = store.config_for(module, quick)
        fields = {f.name for f in dataclasses.fields(base)}
        out[name] = dataclasses.replace(base, **{k: v for k, v in changes.items() if k in fields})
    return out


@dataclasses.dataclass
class Card:
    """Everything on the report card (what the HTML and the PDF render)."""

    plugin: plugins.Plugin
    steps: float
    quick: bool
    frames: dict[str, pd.DataFrame]
    figures: dict[str, Path]
    battery: Any
    headline: list[tuple[str, str, str, str]]
    verdict: list[str]
    environment: dict[str, str]
    extra_figure: bytes = b""


# ------------------------------------------------------------------ numbers


def _plugin_k(plugin: plugins.Plugin, frame: pd.DataFrame) -> float:
    """The plug-in's K in a frame with a ``step`` column (its own, or REPORT_STEPS for a factory)."""
    d = frame[frame["plugin"] == plugin.name]
    if plugin.is_factory:
        return float(REPORT_STEPS)
    steps = d["step"].dropna()
    return float(steps.max()) if len(steps) else math.nan


def _at_step(d: pd.DataFrame, k: float) -> pd.DataFrame:
    if d["step"].isna().all():
        return d
    if not math.isfinite(k):
        k = REPORT_STEPS
    return d[np.isclose(d["step"].astype(float), min(k, d["step"].max()))]


def _fmt(v: float, digits: int = 2) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    if v == 0:
        return "0"
    if 100 <= abs(v) < 1e6:
        return f"{v:.0f}"
    return f"{v:.{digits}g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.{digits - 1}e}"


def _kappa(k: float) -> str:
    """``10``, ``10³``, ``10⁶`` for condition numbers."""
    e = math.log10(k)
    sup = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
    return f"10{str(round(e)).translate(sup)}" if k >= 100 and abs(e - round(e)) < 1e-9 else f"{k:g}"


def _accuracy(card_frames: dict[str, pd.DataFrame], plugin: plugins.Plugin, k: float) -> pd.DataFrame:
    """Misalignment and relative error at K per (map, κ): the plug-in and the COMPARE schedules."""
    f = card_frames["ns_convergence"]
    f = f[f["tile"].astype(int) == 0]
    rows = []
    for kappa in sorted(set(f["condition_number"])):
        d_k = f[np.isclose(f["condition_number"], kappa)]
        for label, d in [(plugin.name, d_k[d_k["plugin"] == plugin.name])] + [
            (s, d_k[d_k["schedule"] == s]) for s in COMPARE
        ]:
            if d.empty:
                continue
            r = _at_step(d, k).iloc[-1]
            rows.append(
                {
                    "map": label,
                    "kappa": kappa,
                    "misalignment": float(r["misalignment"]),
                    "rel_error": float(r["rel_error"]),
                }
            )
    return pd.DataFrame(rows)


def _bf16_floor(frame: pd.DataFrame, select: pd.Series) -> float:
    """Median bf16 misalignment over the last third of the steps (the map's own point when it has one)."""
    d = frame[select & (frame["precision"] == "bfloat16")]
    if d.empty:
        return math.nan
    kappa = d["condition_number"].max()
    d = d[np.isclose(d["condition_number"], kappa)]
    if d["step"].isna().all() or d["step"].nunique() == 1:
        return float(d["misalignment"].median())
    k_max = float(d["step"].max())
    return float(d[d["step"] >= k_max - k_max // 3]["misalignment"].median())


def _headline(frames: dict[str, pd.DataFrame], plugin: plugins.Plugin, k: float) -> tuple[list, dict]:
    """Rows ``(quantity, yours, Jordan, Polar Express)`` and the raw numbers for the verdict."""
    name = plugin.name
    facts: dict[str, Any] = {}
    rows: list[tuple[str, ...]] = []
    kk = k if math.isfinite(k) else REPORT_STEPS

    tr = frames["transfer"]
    mine = tr[tr["plugin"] == name] if "plugin" in tr else tr.iloc[:0]
    if mine.empty:  # e.g. a name the CSV read back as something else: say so instead of an IndexError
        raise plugins.PluginError(f"plug-in {name!r}: no rows of it in the transfer results", plugin=name)
    ks = sorted(set(mine["steps"].dropna()))
    kt = kk if kk in ks else (ks[-1] if ks else math.nan)
    mine_k = mine[mine["steps"] == kt] if ks else mine
    facts["spectral"] = bool(mine_k["spectral"].iloc[0])
    facts["spectral_residual"] = float(mine_k["spectral_residual"].iloc[0])
    rows.append(("spectral (‖X − U p(Σ) Vᵀ‖/‖X‖)", _fmt(facts["spectral_residual"]), "0 (spectral)", "0 (spectral)"))
    band = lambda d: d[(d["sigma"] >= 1e-3) & (d["sigma"] <= 1.0)]["p"]  # noqa: E731
    p = band(mine_k)
    builtin = tr[tr["plugin"].isna()] if "plugin" in tr else tr
    ref = {s: band(builtin[(builtin["schedule"] == s) & (builtin["steps"] == REPORT_STEPS)]) for s in COMPARE}
    rows.append(
        (
            f"p(σ) range for σ ∈ [1e-3, 1] (K = {_fmt(kt)})",
            f"[{_fmt(p.min())}, {_fmt(p.max())}]",
            *(f"[{_fmt(v.min())}, {_fmt(v.max())}]" for v in ref.values()),
        )
    )

    acc = _accuracy(frames, plugin, k)
    facts["accuracy"] = acc
    for kappa in sorted(set(acc["kappa"])):
        a = acc[np.isclose(acc["kappa"], kappa)].set_index("map")
        cell = lambda m, col, a=a: _fmt(float(a.loc[m, col])) if m in a.index else "n/a"  # noqa: E731
        rows.append(
            (
                f"1 − cos(X, polar G) at κ = {_kappa(kappa)}",
                cell(name, "misalignment"),
                *(cell(s, "misalignment") for s in COMPARE),
            )
        )
    worst = acc[np.isclose(acc["kappa"], acc["kappa"].max())].set_index("map")
    rows.append(
        (
            f"‖X − P‖_F/‖P‖_F at κ = {_kappa(acc['kappa'].max())}",
            *(_fmt(float(worst.loc[m, "rel_error"])) if m in worst.index else "n/a" for m in (name, *COMPARE)),
        )
    )

    pr = frames["precision"]
    floors = {name: _bf16_floor(pr, pr["plugin"] == name)} if "plugin" in pr else {}
    for s in COMPARE:
        floors[s] = _bf16_floor(pr, pr["schedule"] == s)
    facts["bf16"] = floors
    rows.append(
        (
            f"bfloat16 floor (median 1 − cos, last third, κ = {_kappa(pr['condition_number'].max())})",
            *(_fmt(floors.get(m, math.nan)) for m in (name, *COMPARE)),
        )
    )

    du = frames["duality"]
    eff = {}
    for m in (name, *COMPARE):
        d = du[du["plugin"] == name] if m == name else du[(du["schedule"] == m) & (du["map"] == "full_ns")]
        d = d[d["matrix"] == "geometric"]
        eff[m] = float(_at_step(d, k)["duality_efficiency"].iloc[-1]) if not d.empty else math.nan
    facts["duality"] = eff
    rows.append(("duality efficiency ⟨G,X⟩/(‖G‖_*‖X‖₂), geometric spectrum", *(_fmt(eff[m], 4) for m in eff)))

    sc = frames["scaling"]
    n = int(sc["n"].max())
    at_n = sc[sc["n"] == n]
    mine_s = at_n[at_n["map"] == "plugin"]
    ns = at_n[at_n["map"] == "ns"]
    mine_t, ns_t = float(mine_s["seconds"].iloc[0]), float(mine_s["ns_seconds_same_cell"].iloc[0])
    facts["time_ratio"] = mine_t / ns_t  # both timed in the same interleaved rounds
    rows.append(
        (
            f"time per call at n = {n} (ms; {mine_s['clock'].iloc[0]} clock)",
            _fmt(1e3 * mine_t),
            f"{_fmt(1e3 * ns_t)} (matfun NS, K = {REPORT_STEPS}, same rounds)",
            "–",
        )
    )
    flops = float(mine_s["flops"].iloc[0])
    mine_flops = (
        f"{_fmt(flops, 3)} / {_fmt(float(mine_s['gflops'].iloc[0]))} ({mine_s['flops_source'].iloc[0]})"
        if math.isfinite(flops)
        else str(mine_s["flops_source"].iloc[0])
    )
    rows.append(
        (
            f"model FLOPs / achieved GFLOP/s at n = {n}",
            mine_flops,
            f"{_fmt(float(ns['flops'].iloc[0]), 3)} / {_fmt(float(ns['gflops'].iloc[0]))}",
            "–",
        )
    )
    return rows, facts


def _verdict(plugin: plugins.Plugin, facts: dict, battery: Any, k: float) -> list[str]:
    """A few plain sentences: what the map is, how it compares, what failed."""
    name = plugin.name
    out = []
    failed = [c.name for c in battery.checks if not c.passed] if battery is not None else []
    kk = f"K = {k:g}" if math.isfinite(k) else "its own (unstated) step count"
    if facts["spectral"]:
        out.append(
            f"{name} is a spectral map (X = U p(Σ) Vᵀ to {_fmt(facts['spectral_residual'])}): its "
            f"transfer function p(σ) is the whole story, measured here at {kk}."
        )
    else:
        out.append(
            f"{name} is not spectral (‖X − U p(Σ) Vᵀ‖/‖X‖ = {_fmt(facts['spectral_residual'])}), as a tiled "
            "or element-wise map is by design: the transfer-function panel shows only diag(Uᵀ X V), and the "
            "battery skips the equivariance checks."
        )
    acc = facts["accuracy"]
    kappas = sorted(set(acc["kappa"]))
    table = acc.pivot_table(index="map", columns="kappa", values="misalignment")
    if name in table.index:
        ahead = [
            kap for kap in kappas if all(table.loc[name, kap] < table.loc[s, kap] for s in COMPARE if s in table.index)
        ]
        behind = [
            kap for kap in kappas if all(table.loc[name, kap] >= table.loc[s, kap] for s in COMPARE if s in table.index)
        ]
        values = " / ".join(_fmt(table.loc[name, kap]) for kap in kappas)
        sentence = (
            f"Misalignment 1 − cos(X, polar G) is {values} at κ = {' / '.join(_kappa(k) for k in kappas)}"
            f" (Polar Express at the same K: "
            f"{' / '.join(_fmt(table.loc['polar_express', kap]) for kap in kappas)})."
        )
        if (
            ahead and failed
        ):  # cos(X, polar G) ignores scale and averages directions: no praise for a non-orthogonaliser
            sentence += " Alignment alone does not make it an orthogonaliser: the battery fails it (below)."
        elif ahead:
            sentence += f" It beats both built-ins at κ = {', '.join(_kappa(k) for k in ahead)}"
            sentence += f" and trails both at κ = {', '.join(_kappa(k) for k in behind)}." if behind else "."
        elif behind:
            sentence += f" It trails both built-ins at κ = {', '.join(_kappa(k) for k in behind)}."
        out.append(sentence)
    floors = facts["bf16"]
    if math.isfinite(floors.get(name, math.nan)):
        ref = floors.get("polar_express", math.nan)
        ratio = floors[name] / ref if ref and math.isfinite(ref) else math.nan
        how = (
            ("about the same as" if 0.5 <= ratio <= 2 else "above" if ratio > 2 else "below")
            if math.isfinite(ratio)
            else "compared with"
        )
        out.append(f"Fed bfloat16 inputs it levels off at {_fmt(floors[name])}, {how} Polar Express's {_fmt(ref)}.")
    if math.isfinite(facts["time_ratio"]):
        out.append(
            f"It takes {facts['time_ratio']:.2f}× the time of matfun's 5-step Newton–Schulz on the same "
            "matrix, timed in the same interleaved rounds."
        )
    if battery is not None:
        if failed:
            out.append(
                f"The validation battery fails {len(failed)} of {len(battery.checks)} checks "
                f"({', '.join(failed)}): see the table before using it in an optimizer."
            )
        else:
            out.append(f"It passes all {len(battery.checks)} checks of the validation battery.")
    return out


# --------------------------------------------------------------- the figure


def _accuracy_figure(acc: pd.DataFrame, plugin: plugins.Plugin, k: float) -> bytes:
    """PNG: misalignment and relative error against κ (plug-in vs COMPARE at the same K)."""
    kk = f"K = {k:g}" if math.isfinite(k) else "own K"
    with plotting.style():
        fig = plotting.figure("double", 2.5, ncols=2)
        for ax, col, ylabel in zip(
            fig.axes, ("misalignment", "rel_error"), (r"$1 - \cos(X, P)$", r"$\|X - P\|_F / \|P\|_F$")
        ):
            for m in (plugin.name, *COMPARE):
                d = acc[acc["map"] == m].sort_values("kappa")
                if d.empty:
                    continue
                kw: dict[str, Any]
                if m == plugin.name:
                    kw = {
                        "color": plugins.COLORS[0],
                        "marker": "*",
                        "markersize": 8,
                        "linewidth": 1.8,
                        "label": f"{m} ({kk})",
                    }
                else:
                    kw = {
                        "color": plotting.schedule_color(m),
                        "marker": "o",
                        "linewidth": 1.1,
                        "label": f"{plotting.schedule_label(m)} ({'K = %g' % (k if math.isfinite(k) else REPORT_STEPS)})",
                    }
                ax.plot(d["kappa"], np.maximum(d[col].to_numpy(float), 1e-16), **kw)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(r"condition number $\kappa$ of $G$")
            ax.set_ylabel(ylabel)
        fig.axes[0].legend(loc="best")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=150)
    return buf.getvalue()


# -------------------------------------------------------------------- build


def _battery(plugin: plugins.Plugin, spectral: bool, schedule: str | None = None, steps: int = 5) -> Any:
    """The :mod:`matfun.testing` battery on the plug-in (torch float32 inputs through the adaptor)."""
    import torch

    from matfun.testing import check_orthogonalizer

    def fn(G: Any) -> Any:
        return plugin.final(G, REPORT_STEPS)

    # a non-spectral map that declares its tile (matfun.Tiled does) is judged as a tiled map:
    # against the tile-wise polar factor, with tile-grid rotations; otherwise equivariance is skipped
    tile = None if spectral else _declared_tile(plugin)
    options = {"tile": tile} if tile is not None else {"skip": () if spectral else ("orthogonal_equivariance",)}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # 48×32 matrices: extra threads only add synchronisation
    try:
        report = check_orthogonalizer(fn, backend="torch", dtype="float32", schedule=schedule, steps=steps, **options)
    finally:
        torch.set_num_threads(previous)
    report.target = plugin.spec
    return report


def _declared_tile(plugin: plugins.Plugin) -> Any:
    """The ``tile`` attribute of the plug-in (or of the map its factory builds), if any."""
    tile = getattr(plugin.target, "tile", None)
    if tile is None and plugin.is_factory:
        try:
            tile = getattr(plugin.target(REPORT_STEPS), "tile", None)
        except Exception:  # noqa: BLE001 - the factory's own errors surface in the battery
            tile = None
    return tile


def build_report(
    plugin: plugins.Plugin,
    out_dir: Path,
    *,
    quick: bool = True,
    device: str = "cpu",
    force: bool = False,
    schedule: str | None = None,
    steps: int = 5,
) -> Card:
    """Run the experiments and the battery for ``plugin``; write ``report.html`` and ``report.pdf``.

    ``schedule`` / ``steps`` are passed to :func:`matfun.testing.check_orthogonalizer`: with a
    schedule the battery also checks agreement with it, the same checks as ``validate --schedule``.

    Raises :class:`diagnostics.plugins.PluginError` when the plug-in breaks its contract.
    """
    out_dir = Path(out_dir)
    plugin.check()
    frames, figures = {}, {}
    for name, config in _configs(quick).items():
        result = runner.run_module(
            get_experiment(name),
            plugins=[plugin],
            config=config,
            quick=quick,
            results_dir=out_dir / "results",
            figures_dir=out_dir / "figures",
            device=device,
            force=force,
            progress=False,
        )
        frames[name] = result.frame
        pngs = [p for p in result.figures if p.suffix == ".png"]
        if pngs:
            figures[name] = pngs[0]
    k = _plugin_k(plugin, frames["ns_convergence"])
    headline, facts = _headline(frames, plugin, k)
    battery = _battery(plugin, facts["spectral"], schedule, steps)
    import torch

    card = Card(
        plugin=plugin,
        steps=k,
        quick=quick,
        frames=frames,
        figures=figures,
        battery=battery,
        headline=headline,
        verdict=_verdict(plugin, facts, battery, k),
        environment={
            "date": datetime.date.today().isoformat(),
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "numpy": np.__version__,
            "device": device,
            "machine": f"{platform.machine()}, {platform.system()}",
            "sizes": "quick" if quick else "full",
        },
        extra_figure=_accuracy_figure(facts["accuracy"], plugin, k),
    )
    (out_dir / "report.html").write_text(render_html(card), encoding="utf-8")
    render_pdf(card, out_dir / "report.pdf")
    return card


# ------------------------------------------------------------------- render

_CAPTIONS = {
    "transfer": (
        "Transfer function",
        "The map applied to G = U diag(σ) Vᵀ, read back as p(σᵢ) = uᵢᵀ X vᵢ "
        "(thick line), against the analytic p_K of Jordan's and Polar Express's schedules; dotted: the "
        "exact polar factor. Right: the fitted smoothing level ε̂ against K.",
    ),
    "ns_convergence": (
        "Convergence against K",
        "1 − cos(X_K, polar G) and ‖X_K − P‖_F/‖P‖_F against the step "
        "count at three condition numbers; stars: your map.",
    ),
    "precision": (
        "Precision",
        "Your map fed float64, float32 and bfloat16 inputs (line style), beside the "
        "built-in schedules computed in each precision; the grey line is the bfloat16 floor.",
    ),
    "duality": (
        "Duality",
        "How much of the nuclear norm ‖G‖_* the map attains: ⟨G, X⟩/(‖G‖_*‖X‖₂) (1 for the "
        "polar factor) on a geometric spectrum and on a real teacher–student momentum.",
    ),
    "scaling": (
        "Cost",
        "Model FLOPs, measured time and achieved GFLOP/s against n, with matfun's full and "
        "tiled NS and a dense GEMM measured in the same run.",
    ),
}

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1040px;margin:2em auto;padding:0 1.2em;
color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.1em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.sub{color:#555;margin-top:0}.verdict{background:#f4f7fb;border-left:4px solid #2b6cb0;padding:.6em 1em;margin:1em 0}
.verdict p{margin:.35em 0}table{border-collapse:collapse;width:100%;font-size:.92em;margin:.6em 0}
th,td{border-bottom:1px solid #e3e3e3;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#fafafa}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.pass{color:#1a7f37;font-weight:600}.fail{color:#c62828;font-weight:600}.warn{color:#9a6700;font-weight:600}
.badge{display:inline-block;border:1px solid currentColor;border-radius:1em;padding:.05em .7em;margin-right:.4em;
font-size:.9em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#444;font-size:.9em}
code{background:#f3f3f3;padding:.05em .3em;border-radius:3px}.small{color:#666;font-size:.85em}
"""


def _img(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _battery_rows(battery: Any) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for c in battery.checks:
        thr = "–" if c.threshold is None else f"{c.comparison} {_fmt_value(c.threshold)}"
        rows.append((c.name, "PASS" if c.passed else "FAIL", _fmt_value(c.value), thr, c.detail))
    return rows


def _fmt_value(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.4g}"


def _badges(card: Card) -> str:
    """One line of coloured badges: battery result, spectral or not."""
    out = []
    if card.battery is not None:
        b = card.battery
        ok = sum(c.passed for c in b.checks)
        out.append(
            ("pass" if b.passed else "fail", f"battery {'PASSED' if b.passed else 'FAILED'} {ok}/{len(b.checks)}")
        )
    spectral = card.headline[0][1]
    is_spectral = card.frames["transfer"].query("plugin == @card.plugin.name")["spectral"].astype(bool).all()
    out.append(("pass" if is_spectral else "warn", f"{'spectral' if is_spectral else 'not spectral'} ({spectral})"))
    return "<p>" + " ".join(f"<span class='badge {c}'>{html.escape(t)}</span>" for c, t in out) + "</p>"


def render_html(card: Card) -> str:
    """The report card as one self-contained HTML page."""
    e = html.escape
    p = card.plugin
    kk = f"K = {card.steps:g}" if math.isfinite(card.steps) else "K unknown"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Report card: {e(p.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Report card: <code>{e(p.name)}</code></h1>",
        f"<p class='sub'><code>{e(p.identity)}</code> · {e(p.step_count_description)} · {kk} · arrays: {e(p.library)}"
        f"{'' if p.batched else ' (2-D, looped over batches)'}</p>",
        _badges(card),
        "<h2>Verdict</h2><div class='verdict'>" + "".join(f"<p>{e(s)}</p>" for s in card.verdict) + "</div>",
        "<h2>Headline numbers</h2><table><tr><th>quantity</th><th>your map</th><th>Jordan (Muon)</th>"
        "<th>Polar Express</th></tr>",
    ]
    for row in card.headline:
        parts.append(
            "<tr><td>" + e(row[0]) + "</td>" + "".join(f"<td class='num'>{e(v)}</td>" for v in row[1:]) + "</tr>"
        )
    parts.append(
        "</table><p class='small'>Built-ins at the same K as your map; 64×128 float64 inputs unless "
        "stated; time on the machine below, in the same run.</p>"
    )
    parts.append(
        "<h2>Accuracy against the condition number</h2><figure>"
        f"<img alt='accuracy against condition number' src='{_img(card.extra_figure)}'>"
        "<figcaption>Misalignment and relative error to the exact polar factor at the final K, on "
        "seeded 64×128 matrices with geometric spectra.</figcaption></figure>"
    )
    for name, (title, caption) in _CAPTIONS.items():
        if name in card.figures:
            parts.append(
                f"<h2>{e(title)}</h2><figure><img alt='{e(name)}' "
                f"src='{_img(card.figures[name].read_bytes())}'><figcaption>{e(caption)} "
                f"<span class='small'>(experiment <code>{name}</code>)</span></figcaption></figure>"
            )
    if card.battery is not None:
        b = card.battery
        parts.append(
            "<h2>Validation battery (<code>matfun.testing</code>)</h2><table><tr><th>check</th>"
            "<th>result</th><th>value</th><th>threshold</th><th>detail</th></tr>"
        )
        for name, res, val, thr, det in _battery_rows(b):
            cls = "pass" if res == "PASS" else "fail"
            parts.append(
                f"<tr><td><code>{e(name)}</code></td><td class='{cls}'>{res}</td><td class='num'>{e(val)}"
                f"</td><td class='num'>{e(thr)}</td><td>{e(det)}</td></tr>"
            )
        parts.append(
            f"</table><p class='small'>torch float32 inputs, fp32 thresholds; "
            f"{'PASSED' if b.passed else 'FAILED'}: {sum(c.passed for c in b.checks)} of "
            f"{len(b.checks)} checks.</p>"
        )
    if p.notes:
        parts.append(
            "<h2>Notes on conversions</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in sorted(p.notes)) + "</ul>"
        )
    env = ", ".join(f"{k} {v}" for k, v in card.environment.items())
    cmd = f"python -m diagnostics report {p.spec}{' --quick' if card.quick else ''}"
    parts.append(
        f"<h2>Reproduce</h2><p><code>{e(cmd)}</code></p><p class='small'>{e(env)}. Made by matfun's "
        "diagnostics; the cell cache next to this file makes a rerun recompute only what changed.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _wrapped_table(rows: Sequence[tuple[str, ...]], widths: tuple[int, ...]) -> str:
    """A fixed-width text table whose cells wrap within ``widths`` characters."""
    lines = []
    for row in rows:
        cells = [textwrap.wrap(str(c), w) or [""] for c, w in zip(row, widths)]
        for i in range(max(len(c) for c in cells)):
            lines.append("  ".join((c[i] if i < len(c) else "").ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(lines)


def render_pdf(card: Card, path: Path) -> None:
    """The same content as :func:`render_html` as a multi-page PDF (A4 portrait)."""
    import matplotlib.image as mpimg
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    p = card.plugin
    width, height = 8.27, 11.69

    def text_page(pdf: PdfPages, blocks: list[tuple[str, str]]) -> None:
        fig = Figure(figsize=(width, height))
        y = 0.95
        for kind, text in blocks:
            size = {"h1": 16, "h2": 12, "mono": 7, "p": 9.5, "small": 8}[kind]
            family = "DejaVu Sans Mono" if kind == "mono" else "DejaVu Sans"
            wrap = {"mono": 130, "h1": 70, "h2": 90}.get(kind, 105)
            lines = (
                [w for line in text.split("\n") for w in (textwrap.wrap(line, wrap) or [""])]
                if kind != "mono"
                else text.split("\n")
            )
            for line in lines:
                fig.text(
                    0.06,
                    y,
                    line,
                    fontsize=size,
                    family=family,
                    va="top",
                    weight="bold" if kind in ("h1", "h2") else "normal",
                )
                y -= size / 72 / height * 1.45
            y -= 0.012
        pdf.savefig(fig)

    head = [
        ("h1", f"Report card: {p.name}"),
        ("small", f"{p.identity} · {p.step_count_description} · arrays: {p.library}"),
        ("h2", "Verdict"),
    ] + [("p", s) for s in card.verdict]
    table = [("quantity", "your map", "Jordan", "Polar Express"), *card.headline]
    head += [("h2", "Headline numbers"), ("mono", _wrapped_table(table, (44, 24, 24, 24)))]
    if card.battery is not None:
        head += [("h2", "Validation battery (matfun.testing)"), ("mono", card.battery.table())]
    if p.notes:
        head += [("h2", "Notes on conversions")] + [("p", "• " + n) for n in sorted(p.notes)]
    head += [("small", ", ".join(f"{k} {v}" for k, v in card.environment.items()))]
    images = [("Accuracy against the condition number", card.extra_figure)] + [
        (_CAPTIONS[n][0], card.figures[n].read_bytes()) for n in _CAPTIONS if n in card.figures
    ]
    with PdfPages(path, metadata={"Title": f"Report card: {p.name}", "Creator": "matfun diagnostics"}) as pdf:
        text_page(pdf, head)
        for i in range(0, len(images), 2):
            fig = Figure(figsize=(width, height))
            for j, (title, data) in enumerate(images[i : i + 2]):
                img = mpimg.imread(io.BytesIO(data), format="png")
                ax = fig.add_axes((0.05, 0.52 - 0.48 * j, 0.9, 0.42))
                ax.imshow(img)
                ax.set_axis_off()
                fig.text(0.05, 0.965 - 0.48 * j, title, fontsize=12, weight="bold", va="top")
            pdf.savefig(fig)
