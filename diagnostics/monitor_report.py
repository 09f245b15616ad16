"""``python -m diagnostics monitor-report LOG [--out DIR]``: an HTML page of a ``matfun.monitor`` log.

The page is self-contained (figures embedded as PNG data URIs): a verdict per layer, the
curves of every metric against the step (one line per layer), heat maps layers × steps of
orthogonality and alignment, and the non-finite events.  ``LOG`` is what
:meth:`matfun.monitor.Monitor.save` (or ``Monitor(log=...)``) wrote: CSV or Parquet with
columns ``step, param, metric, value``.  A log that is missing, empty or not a monitor log:
one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
from pathlib import Path
from typing import Any

HELP = "an HTML report (curves, heat maps, non-finite events, verdicts) of a matfun.monitor log"
DESCRIPTION = (
    "Read a log written by matfun.monitor.Monitor (CSV or Parquet with columns step, param, metric, value) "
    "and write DIR/monitor_report.html: a verdict per layer, per-layer curves of each metric against the step, "
    "heat maps of orthogonality and alignment over layers and steps, and the non-finite events. "
    "Self-contained (figures embedded). Default DIR: the log's directory."
)
EXAMPLES = """
python -m diagnostics monitor-report runs/monitor.csv
python -m diagnostics monitor-report runs/monitor.parquet --out report/
"""

COLUMNS = ("step", "param", "metric", "value")
#: the metrics drawn, in this order (others found in the log follow)
ORDER = (
    "orthogonality",
    "alignment_momentum",
    "alignment_grad",
    "map_error",
    "effective_step",
    "step_norm",
    "update_rms",
    "sv_min",
    "sv_max",
    "lr",
    "whatif_tiling_loss",
    "momentum_cond",
    "whatif_muon2_cond",
)
LOG_SCALE = {
    "effective_step",
    "step_norm",
    "update_rms",
    "sv_min",
    "sv_max",
    "lr",
    "momentum_cond",
    "whatif_muon2_cond",
}
NOT_DRAWN = {"rows", "cols", "nonfinite"}
HEATMAPS = ("orthogonality", "alignment_momentum", "alignment_grad")
#: thresholds of the verdicts
ORTHOGONAL, NOT_ORTHOGONAL = 0.95, 0.8
ALIGNED = 0.8
MAP_FAR = 0.5
LR_SPREAD = 2.0
TILING_LOSS = 0.3


class LogError(ValueError):
    """The file is missing, empty or not a monitor log."""


# ----------------------------------------------------------------------------- reading


def load_log(path: str | Path):
    """The log as a ``DataFrame`` (columns ``step, param, metric, value``), or :class:`LogError`."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise LogError(f"monitor log {str(path)!r} does not exist")
    if path.is_dir():
        raise LogError(f"monitor log {str(path)!r} is a directory, not a file")
    if path.stat().st_size == 0:
        raise LogError(f"monitor log {str(path)!r} is empty")
    with open(path, "rb") as f:
        parquet = f.read(4) == b"PAR1"
    try:
        if parquet:
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path)
    except ImportError as exc:
        raise LogError(f"monitor log {str(path)!r} is Parquet, which needs pyarrow ({exc})") from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LogError(
            f"{str(path)!r} is not a monitor log (unreadable as CSV: {' '.join(str(exc).split())})"
        ) from None
    if tuple(frame.columns) != COLUMNS:
        raise LogError(
            f"{str(path)!r} is not a monitor log: columns {list(frame.columns)[:8]}, expected {list(COLUMNS)}"
        )
    if frame.empty:
        raise LogError(f"monitor log {str(path)!r} has no records (the monitor recorded no step)")
    step = pd.to_numeric(frame["step"], errors="coerce")
    value = pd.to_numeric(frame["value"], errors="coerce")
    if step.isna().any() or value.isna().sum() > frame["value"].isna().sum():
        raise LogError(f"{str(path)!r} is not a monitor log: non-numeric step or value entries")
    return frame.assign(
        step=step.astype("int64"),
        value=value.astype("float64"),
        param=frame["param"].astype(str),
        metric=frame["metric"].astype(str),
    )


# ----------------------------------------------------------------------------- verdicts


def _shapes(frame) -> dict[str, tuple[int, int]]:
    dims = frame[frame.metric.isin(["rows", "cols"])].groupby(["param", "metric"])["value"].first()
    out = {}
    for param in frame.param.unique():
        try:
            out[param] = (int(dims[(param, "rows")]), int(dims[(param, "cols")]))
        except KeyError:
            pass
    return out


def _medians(frame):
    return frame[~frame.metric.isin(NOT_DRAWN)].groupby(["param", "metric"])["value"].median().unstack()


def verdicts(frame) -> dict[str, list[str]]:
    """A short verdict per layer: a list of findings (``["no issue found"]`` when none)."""
    med = _medians(frame)
    shapes = _shapes(frame)
    params = list(dict.fromkeys(frame.param))
    found: dict[str, list[str]] = {p: [] for p in params}
    events = frame[frame.metric == "nonfinite"]
    for param, rows in events.groupby("param", sort=False):
        for kind, code in (("gradient", 1.0), ("update", 2.0)):
            steps = sorted(rows.loc[rows.value == code, "step"])
            if steps:
                found[param].append(
                    f"non-finite {kind} at step {steps[0]}"
                    + (f" (and {len(steps) - 1} more)" if len(steps) > 1 else "")
                )

    def get(param: str, metric: str) -> float:
        try:
            value = med.loc[param, metric]
        except KeyError:
            return math.nan
        return float(value)

    for param in params:
        orth = get(param, "orthogonality")
        if orth < NOT_ORTHOGONAL:
            found[param].append(f"updates not orthogonalised (orthogonality {orth:.2f})")
        elif orth < ORTHOGONAL:
            ratio = get(param, "sv_min") / get(param, "sv_max")
            found[param].append(
                f"updates partly orthogonalised (orthogonality {orth:.2f}, "
                f"σ_min/σ_max {ratio:.2g}): the map leaves small singular values behind"
            )
        else:
            align = get(param, "alignment_momentum")
            found[param].append(f"orthogonalised updates (orthogonality {orth:.2f})")
            if align < ALIGNED:
                found[param].append(
                    f"orthogonal but not along polar(momentum) (alignment {align:.2f}): "
                    "the map's input is not the momentum (preconditioned?)"
                )
        err = get(param, "map_error")
        if err > MAP_FAR:
            found[param].append(f"map far from the exact polar factor of its input (error {err:.2f})")
        loss = get(param, "whatif_tiling_loss")
        if loss > TILING_LOSS:
            found[param].append(f"tiling would lose {100 * loss:.0f}% of the spectral descent")
        cond, pre = get(param, "momentum_cond"), get(param, "whatif_muon2_cond")
        if cond > 0 and pre > 0:
            ratio = cond / pre
            if ratio >= 2:
                found[param].append(f"Muon² preconditioning would improve the conditioning {ratio:.1f}×")
            elif ratio <= 0.5:
                found[param].append(f"Muon² preconditioning would worsen the conditioning {1 / ratio:.1f}×")
    # effective lr (the step's spectral norm) across layers of one shape
    by_shape: dict[tuple[int, int], list[str]] = {}
    for param in params:
        if param in shapes and get(param, "step_norm") > 0:
            by_shape.setdefault(shapes[param], []).append(param)
    for (H, W), members in by_shape.items():
        if len(members) < 2:
            continue
        sizes = {p: get(p, "step_norm") for p in members}
        spread = max(sizes.values()) / min(sizes.values())
        if spread >= LR_SPREAD:
            typical = sorted(sizes.values())[len(sizes) // 2]
            for p in members:
                found[p].append(
                    f"effective lr differs {spread:.1f}× across the {len(members)} layers of shape "
                    f"{H}×{W} (this one {sizes[p]:.3g}, median {typical:.3g})"
                )
    for param in params:
        if not found[param]:
            found[param].append("no issue found" if param in med.index else "no matrix metrics recorded")
    return found


# ----------------------------------------------------------------------------- figures


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _metrics_drawn(frame) -> list[str]:
    present = [m for m in dict.fromkeys(frame.metric) if m not in NOT_DRAWN]
    return [m for m in ORDER if m in present] + [m for m in present if m not in ORDER]


def curves_figure(frame) -> str | None:
    """Per-layer curves of each metric against the step (PNG data URI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _metrics_drawn(frame)
    if not metrics:
        return None
    params = list(dict.fromkeys(frame.param))
    cols = 3
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(params) <= 10 else "viridis")
    colors = {p: cmap(i if len(params) <= 10 else i / max(len(params) - 1, 1)) for i, p in enumerate(params)}
    for ax, metric in zip(axes.flat, metrics):
        sub = frame[frame.metric == metric]
        for param, rows_ in sub.groupby("param", sort=False):
            rows_ = rows_.sort_values("step")
            ax.plot(
                rows_.step,
                rows_.value,
                marker="." if len(rows_) < 30 else None,
                linewidth=1.1,
                color=colors[param],
                label=param,
            )
        positive = (sub.value > 0).all()
        if metric in LOG_SCALE and positive and len(sub):
            ax.set_yscale("log")
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    if len(params) <= 12:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(
            handles,
            labels,
            loc="upper center",
            ncol=min(len(params), 4),
            fontsize=8,
            bbox_to_anchor=(0.5, 1.0 + 0.02 * math.ceil(len(params) / 4)),
        )
    fig.tight_layout()
    return _png(fig)


def heatmap_figure(frame, metric: str) -> str | None:
    """Layers × steps heat map of ``metric`` on [0, 1] (PNG data URI), None if not in the log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = frame[frame.metric == metric]
    if sub.empty:
        return None
    grid = sub.pivot_table(index="param", columns="step", values="value", aggfunc="mean")
    grid = grid.reindex(list(dict.fromkeys(sub.param)))
    fig, ax = plt.subplots(figsize=(min(max(6.0, 2 + 0.25 * grid.shape[1]), 12), 1.2 + 0.3 * grid.shape[0]))
    im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    steps = list(grid.columns)
    ticks = sorted(set(range(0, len(steps), max(1, len(steps) // 10))) | {len(steps) - 1})
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
    ax.set_xlabel("step", fontsize=8)
    ax.set_title(f"{metric} (layers × steps)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1250px;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.88em} td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4} .muted{color:#777} img{max-width:100%} .bad{color:#b00020} .good{color:#1b5e20}
code{background:#f4f4f4;padding:0 .2em}
"""


def _fmt(value: float) -> str:
    if value != value:
        return "–"
    return f"{value:.3g}"


def build_html(frame, source: str = "") -> str:
    """The report page of a monitor log ``frame`` (a self-contained HTML string)."""
    e = html.escape
    found = verdicts(frame)
    shapes = _shapes(frame)
    med = _medians(frame)
    events = frame[frame.metric == "nonfinite"].sort_values("step")
    steps = sorted(frame.loc[~frame.metric.isin(["nonfinite"]), "step"].unique())
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>matfun monitor report{(' — ' + e(source)) if source else ''}</title><style>{_CSS}</style></head><body>",
        "<h1>matfun monitor report</h1>",
        f"<p class='muted'>{e(source)}</p>" if source else "",
        "<section id='summary'><h2>Summary</h2><p>",
        f"{frame.param.nunique()} parameter(s), {len(steps)} recorded step(s)"
        + (f" ({steps[0]}–{steps[-1]})" if steps else "")
        + f", {len(events)} non-finite event(s), {len(frame)} records.</p></section>",
        "<section id='verdicts'><h2>Verdict per layer</h2><table><tr><th>layer</th><th>shape</th>"
        "<th>orthogonality</th><th>alignment (momentum)</th><th>map error</th><th>effective lr ‖lr·u‖₂</th>"
        "<th>verdict</th></tr>",
    ]
    for param, items in found.items():
        shape = "×".join(map(str, shapes[param])) if param in shapes else "–"

        def cell(metric: str, param=param) -> str:
            try:
                return _fmt(float(med.loc[param, metric]))
            except KeyError:
                return "–"

        bad = any(
            i.startswith(("updates not", "non-finite", "orthogonal but", "map far", "effective lr")) for i in items
        )
        css = "bad" if bad else "good"
        parts.append(
            f"<tr><td><code>{e(param)}</code></td><td>{shape}</td><td>{cell('orthogonality')}</td>"
            f"<td>{cell('alignment_momentum')}</td><td>{cell('map_error')}</td><td>{cell('step_norm')}</td>"
            f"<td class='{css}'>{'<br>'.join(e(i) for i in items)}</td></tr>"
        )
    parts.append(
        "</table><p class='muted'>Medians over the recorded steps.  Orthogonality "
        "‖u‖<sub>*</sub>/(√r‖u‖<sub>F</sub>) is 1 when all singular values of the update are equal; "
        "alignment is cos(−ΔW, polar(M)).</p></section>"
    )
    parts.append("<section id='curves'><h2>Metrics against the step</h2>")
    curves = curves_figure(frame)
    parts.append(f"<img alt='per-layer curves' src='{curves}'>" if curves else "<p>No metrics recorded.</p>")
    parts.append("</section><section id='heatmaps'><h2>Heat maps: layers × steps</h2>")
    drawn = 0
    for metric in HEATMAPS:
        uri = heatmap_figure(frame, metric)
        if uri:
            drawn += 1
            parts.append(f"<h3>{e(metric)}</h3><img alt='{e(metric)} heat map' src='{uri}'>")
    if not drawn:
        parts.append("<p>No orthogonality or alignment recorded.</p>")
    parts.append("</section><section id='nonfinite'><h2>Non-finite events</h2>")
    if events.empty:
        parts.append("<p>None: every gradient and every update was finite.</p>")
    else:
        parts.append("<table><tr><th>step</th><th>layer</th><th>tensor</th></tr>")
        for row in events.itertuples():
            kind = {1.0: "gradient", 2.0: "update"}.get(row.value, f"code {row.value:g}")
            parts.append(f"<tr><td>{row.step}</td><td><code>{e(row.param)}</code></td><td class='bad'>{kind}</td></tr>")
        parts.append("</table>")
    parts.append("</section></body></html>")
    return "\n".join(parts)


def write_report(log: str | Path, out: str | Path | None = None) -> Path:
    """Write ``OUT/monitor_report.html`` for the monitor log ``log``; returns its path."""
    frame = load_log(log)
    out = Path(log).resolve().parent if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "monitor_report.html"
    path.write_text(build_html(frame, str(log)), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the ``monitor-report`` subcommand."""
    p.add_argument("log", metavar="LOG", help="a log written by matfun.monitor.Monitor (CSV or Parquet)")
    p.add_argument(
        "--out", metavar="DIR", default=None, help="directory of monitor_report.html (default: the log's directory)"
    )


def run(args: argparse.Namespace) -> int:
    """Write the report (exit 0); a bad log raises :class:`diagnostics.cli.UsageError` (exit 2)."""
    from .cli import UsageError

    try:
        path = write_report(args.log, args.out)
    except LogError as exc:
        raise UsageError(str(exc)) from None
    print(f"monitor report: {path}")
    return 0


def main(argv: Any = None) -> int:  # pragma: no cover - convenience
    from .cli import main as cli_main

    return cli_main(["monitor-report", *(argv or [])])
