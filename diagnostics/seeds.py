"""Several seeds in one figure: mean and spread, for every experiment without changing its ``plot``.

:func:`plot_seeds` draws the experiment's figures once per seed (captured, not
written: :func:`diagnostics.plotting.capture_figures`), then keeps the first
seed's figure as the canvas and, artist by artist, replaces every curve by the
mean over the seeds and adds the spread: a shaded min–max band under a line,
min–max error bars on marker-only points (in x too when the x values differ
between seeds, as for a measured predictor) and on bars (vertical or horizontal).
Error bars the experiment draws itself (e.g. a timing's IQR) stay as in the
first seed.  A footnote says how
many seeds and what the band is.  Text the experiment writes from its data (a
fitted slope, a labelled floor) comes from the first seed, which the footnote
says too.

Artists are matched by their position in the figure; an axes whose curves do
not line up across seeds (a different number of lines) keeps the first seed's
drawing and is named in the footnote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.lines import Line2D

from . import plotting

__all__ = ["merge_figures", "plot_seeds"]


def _lines(ax: Any) -> list[Line2D]:
    """The axes' curves, without the caps of error bars the experiment drew itself (left as in the first seed)."""
    caps = {id(cap) for c in ax.containers if isinstance(c, ErrorbarContainer) for cap in c.lines[1]}
    return [ln for ln in ax.get_lines() if len(np.atleast_1d(ln.get_ydata())) > 0 and id(ln) not in caps]


def _bars(ax: Any) -> list[BarContainer]:
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _arrays(values: Sequence[Any]) -> np.ndarray | None:
    try:
        stacked = np.array([np.asarray(v, dtype=float) for v in values])
    except (TypeError, ValueError):
        return None
    return stacked if stacked.ndim == 2 else None


def _merge_line(ax: Any, line: Line2D, others: Sequence[Line2D]) -> bool:
    ys = _arrays([line.get_ydata(), *(o.get_ydata() for o in others)])
    xs = _arrays([line.get_xdata(), *(o.get_xdata() for o in others)])
    if ys is None or xs is None or ys.shape != xs.shape:
        return False
    same_x = np.allclose(xs, xs[0], equal_nan=True)
    with np.errstate(all="ignore"):
        y_mean, y_lo, y_hi = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
        x_mean, x_lo, x_hi = np.nanmean(xs, 0), np.nanmin(xs, 0), np.nanmax(xs, 0)
    if np.allclose(y_lo, y_hi, equal_nan=True) and same_x:
        return True  # identical in every seed (a reference line): nothing to add
    line.set_data(x_mean, y_mean)
    color = line.get_color()
    drawn_line = line.get_linestyle() not in ("None", "none", "", " ")
    if drawn_line and same_x and line.get_transform() == ax.transData:
        ax.fill_between(
            x_mean, y_lo, y_hi, color=color, alpha=0.18, linewidth=0, zorder=max(line.get_zorder() - 0.5, 0)
        )
    elif line.get_transform() == ax.transData:
        xerr = None if same_x else np.vstack([x_mean - x_lo, x_hi - x_mean])
        ax.errorbar(
            x_mean,
            y_mean,
            yerr=np.vstack([y_mean - y_lo, y_hi - y_mean]),
            xerr=xerr,
            fmt="none",
            ecolor=color,
            elinewidth=0.7,
            capsize=1.5,
            zorder=line.get_zorder(),
        )
    return True


def _merge_bars(ax: Any, bars: BarContainer, others: Sequence[BarContainer]) -> bool:
    horizontal = getattr(bars, "orientation", "vertical") == "horizontal"
    size = (lambda p: p.get_width()) if horizontal else (lambda p: p.get_height())
    values = _arrays([[size(p) for p in bars], *([size(p) for p in o] for o in others)])
    if values is None:
        return False
    mean, lo, hi = values.mean(0), values.min(0), values.max(0)
    centres = []
    for patch, v in zip(bars, mean):
        if horizontal:
            patch.set_width(v)
            centres.append(patch.get_y() + patch.get_height() / 2)
        else:
            patch.set_height(v)
            centres.append(patch.get_x() + patch.get_width() / 2)
    spread = np.vstack([mean - lo, hi - mean])
    kw = {"fmt": "none", "ecolor": "0.2", "elinewidth": 0.8, "capsize": 2}
    if horizontal:
        ax.errorbar(mean, centres, xerr=spread, **kw)
    else:
        ax.errorbar(centres, mean, yerr=spread, **kw)
    return True


def merge_figures(figures: Sequence[Any], seeds: Sequence[int]) -> Any:
    """Merge the same figure drawn for several seeds into the first one (mean and min–max spread)."""
    base, others = figures[0], figures[1:]
    skipped = []
    for i, ax in enumerate(base.axes):
        other_axes = [f.axes[i] for f in others if len(f.axes) == len(base.axes)]
        lines, other_lines = _lines(ax), [_lines(a) for a in other_axes]
        bars, other_bars = _bars(ax), [_bars(a) for a in other_axes]
        if (
            len(other_axes) != len(others)
            or any(len(o) != len(lines) for o in other_lines)
            or any(len(o) != len(bars) for o in other_bars)
        ):
            if lines or bars:
                skipped.append(f"({'abcdefghijklmnop'[i % 16]})")
            continue
        for j, line in enumerate(lines):
            _merge_line(ax, line, [o[j] for o in other_lines])
        for j, bar in enumerate(bars):
            _merge_bars(ax, bar, [o[j] for o in other_bars])
    note = (
        f"mean of {len(seeds)} seeds ({', '.join(str(s) for s in seeds)}); band / error bars: min–max "
        f"over seeds; printed values: seed {seeds[0]}"
    )
    if skipped:
        note += f"; panel(s) {' '.join(skipped)}: seed {seeds[0]} only (curves differ between seeds)"
    _add_footer(base, note)
    return base


#: Height (inches) added below a merged figure for its footnote, so it never overlaps an x-label.
FOOTER_HEIGHT = 0.14


def _add_footer(fig: Any, note: str) -> None:
    """Grow ``fig`` by :data:`FOOTER_HEIGHT` at the bottom and write ``note`` there, outside every axes."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + FOOTER_HEIGHT)
    share = FOOTER_HEIGHT / (height + FOOTER_HEIGHT)
    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        engine.set(rect=(0.0, share, 1.0, 1.0 - share))
    else:  # a fixed layout: move every axes up into the old canvas
        for ax in fig.axes:
            x0, y0, w, h = ax.get_position().bounds
            ax.set_position((x0, share + y0 * (1.0 - share), w, h * (1.0 - share)))
    fig.text(0.995, share * 0.45, note, ha="right", va="center", fontsize=5.5, color="0.35")


def plot_seeds(
    module: Any, frames: Sequence[pd.DataFrame], config: Any, out_dir: Path, seeds: Sequence[int]
) -> list[Path]:
    """Draw ``module``'s figures for the per-seed ``frames`` as mean and spread; returns the stems written."""
    per_seed = []
    for frame in frames:
        with plotting.capture_figures() as captured:
            module.plot(frame, config, out_dir)
        per_seed.append(captured)
    stems = []
    for k, (fig, stem) in enumerate(per_seed[0]):
        same = [captured[k][0] for captured in per_seed[1:] if k < len(captured)]
        plotting.save_figure(merge_figures([fig, *same], list(seeds)), stem)
        stems.append(stem)
    return stems
