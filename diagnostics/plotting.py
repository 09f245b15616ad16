"""One consistent, reproducible figure style for every diagnostics experiment.

* Colour-blind-safe palette: Okabe & Ito (2008), :data:`OKABE_ITO`.
* :func:`style` — a context manager applying :data:`RC` (8 pt DejaVu Sans, TrueType
  fonts in PDF, light grid, constrained layout, fixed ``svg.hashsalt``).
* :func:`figure` — a :class:`matplotlib.figure.Figure` of a fixed paper width
  (single column 3.35 in, double column 6.9 in).  No pyplot: figures are never
  registered with a GUI backend and never leak between experiments.
* :func:`save_figure` — writes ``<stem>.pdf`` and ``<stem>.png`` with deterministic
  metadata, so re-running an experiment on the same machine gives byte-identical files
  (another machine, even of the same kind, draws slightly different pixels: see
  :mod:`diagnostics.gallery`).
* :func:`schedule_color` / :func:`schedule_label` — one colour and display name per
  Newton–Schulz schedule across all figures; :func:`tile_style` — one marker and
  linestyle per tile size.

Example
-------
>>> from diagnostics import plotting
>>> with plotting.style():
...     fig = plotting.figure("single")
...     ax = fig.add_subplot()
...     _ = ax.plot([1, 2], [1, 2], color=plotting.schedule_color("jordan"))
...     paths = plotting.save_figure(fig, "/tmp/example")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.rcsetup import cycler

__all__ = [
    "DOUBLE_COLUMN",
    "OKABE_ITO",
    "RC",
    "REFERENCE_COLOR",
    "SCHEDULE_COLORS",
    "SCHEDULE_LABELS",
    "SINGLE_COLUMN",
    "capture_figures",
    "figure",
    "panel_label",
    "save_figure",
    "schedule_color",
    "schedule_label",
    "style",
    "tile_label",
    "tile_style",
]

#: Okabe–Ito colour-blind-safe palette (name → hex).
OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

#: Fixed colour per published schedule (used by every figure).
SCHEDULE_COLORS: dict[str, str] = {
    "cubic": OKABE_ITO["reddish_purple"],
    "jordan": OKABE_ITO["blue"],
    "you": OKABE_ITO["orange"],
    "polar_express": OKABE_ITO["bluish_green"],
}
#: Display names of the schedules.
SCHEDULE_LABELS: dict[str, str] = {
    "cubic": "cubic NS",
    "jordan": "Jordan (Muon)",
    "you": "You",
    "polar_express": "Polar Express",
}
#: Colour of references (exact polar factor, ideal values).
REFERENCE_COLOR = OKABE_ITO["black"]
# Further colours for schedules without a fixed colour, in a stable order.
_EXTRA_COLORS = [OKABE_ITO[k] for k in ("vermillion", "sky_blue", "yellow")]

#: Figure widths in inches (typical two-column paper layouts).
SINGLE_COLUMN = 3.35
DOUBLE_COLUMN = 6.9
_GOLDEN = (math.sqrt(5) - 1) / 2

#: Style parameters applied by :func:`style` (and by :func:`save_figure`).
RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # bundled with matplotlib: same glyphs everywhere
    "mathtext.fontset": "dejavusans",
    "text.usetex": False,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "legend.handlelength": 2.0,
    "lines.linewidth": 1.3,
    "lines.markersize": 4,
    "axes.linewidth": 0.6,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.35,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=[*list(OKABE_ITO.values())[1:], OKABE_ITO["black"]]),
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "savefig.dpi": 300,
    "savefig.bbox": "standard",  # fixed canvas size: identical page geometry on every run
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "svg.hashsalt": "matfun-diagnostics",
    "path.simplify": True,
}

# Metadata that would otherwise carry timestamps / software versions.
_PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}
_PNG_METADATA = {"Software": None}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply the diagnostics figure style (:data:`RC`) inside a ``with`` block."""
    # matplotlib >= 3.10's stubs key ``rc`` by a Literal of the rc names (3.8's by str): either accepts Any keys.
    rc: dict[Any, Any] = RC
    with matplotlib.rc_context(rc):
        yield


def figure(
    width: str | float = "single",
    height: float | None = None,
    *,
    nrows: int = 1,
    ncols: int = 1,
    **subplots_kw: Any,
) -> Figure:
    """A new figure of a paper width, with ``nrows × ncols`` axes already added.

    Parameters
    ----------
    width : "single", "double" or float
        Single column (3.35 in), double column (6.9 in), or a width in inches.
    height : float, optional
        Height in inches; default: a golden-ratio panel height per row
        (capped at 2.6 in per row for double-column figures).
    nrows, ncols, **subplots_kw
        Passed to :meth:`Figure.subplots`; the axes are in ``fig.axes``.

    Call inside :func:`style` so the figure picks up the style.
    """
    if width == "single":
        w = SINGLE_COLUMN
    elif width == "double":
        w = DOUBLE_COLUMN
    elif isinstance(width, (int, float)) and width > 0:
        w = float(width)
    else:
        raise ValueError(f"width must be 'single', 'double' or a positive number of inches, got {width!r}")
    if height is None:
        height = nrows * min(w / ncols * _GOLDEN, 2.6)
    fig = Figure(figsize=(w, height))
    fig.subplots(nrows, ncols, squeeze=False, **subplots_kw)
    return fig


_CAPTURE: contextvars.ContextVar[list | None] = contextvars.ContextVar("diagnostics_capture", default=None)


@contextlib.contextmanager
def capture_figures() -> Iterator[list[tuple[Figure, Path]]]:
    """Collect ``(figure, stem)`` pairs that :func:`save_figure` is asked to write, writing nothing.

    Used to combine the figures of several seeds into one (:mod:`diagnostics.seeds`).
    """
    sink: list[tuple[Figure, Path]] = []
    token = _CAPTURE.set(sink)
    try:
        yield sink
    finally:
        _CAPTURE.reset(token)


def save_figure(fig: Figure, path_stem: str | os.PathLike) -> list[Path]:
    """Write ``fig`` to ``<path_stem>.pdf`` and ``<path_stem>.png`` reproducibly.

    Timestamps and software versions are stripped from the metadata, fonts are
    embedded as TrueType (``pdf.fonttype`` 42) and the SVG hash salt is fixed, so
    saving the same figure twice gives byte-identical files (on one machine: other
    library builds and last-bit differences in the data change pixels elsewhere).  Each file is written
    to a temporary name in the same directory and moved into place, so a crash
    never leaves a half-written figure behind.

    Returns the two written paths (PDF first); inside :func:`capture_figures`
    nothing is written and ``[]`` is returned.
    """
    stem = Path(path_stem)
    if stem.suffix in (".pdf", ".png"):
        stem = stem.with_suffix("")
    sink = _CAPTURE.get()
    if sink is not None:
        sink.append((fig, stem))
        return []
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with style():
        for ext, metadata in (("pdf", _PDF_METADATA), ("png", _PNG_METADATA)):
            path = stem.with_name(stem.name + "." + ext)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                fig.savefig(tmp, format=ext, metadata=metadata)
                os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
            written.append(path)
    return written


def schedule_color(name: str) -> str:
    """The colour of schedule ``name`` (fixed for the published ones)."""
    if name in SCHEDULE_COLORS:
        return SCHEDULE_COLORS[name]
    # Stable across runs and processes (no ``hash()``, which is salted).
    index = sum(map(ord, str(name))) % len(_EXTRA_COLORS)
    return _EXTRA_COLORS[index]


def schedule_label(name: str) -> str:
    """Display name of schedule ``name``."""
    return SCHEDULE_LABELS.get(name, str(name))


_TILE_MARKERS = ["s", "^", "D", "v", "P", "X", "<", ">"]
_TILE_LINESTYLES = ["--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1))]


def tile_style(tile: int | None) -> dict[str, Any]:
    """Marker and linestyle for a tile size ``T`` (``None``/``0``/``"full"``: no tiling).

    The full matrix is a solid line with circles; tile sizes get a marker and a
    dashed pattern indexed by ``round(log2 T)``, so ``T = 128`` looks the same in
    every figure.  Returns keyword arguments for :meth:`Axes.plot`.
    """
    if tile is None or tile == 0 or (isinstance(tile, str) and tile.lower() in ("full", "none", "")):
        return {"marker": "o", "linestyle": "-"}
    t = int(tile)
    if t <= 0:
        raise ValueError(f"tile size must be positive, got {tile!r}")
    k = max(round(math.log2(t)), 0)
    return {"marker": _TILE_MARKERS[k % len(_TILE_MARKERS)], "linestyle": _TILE_LINESTYLES[k % len(_TILE_LINESTYLES)]}


def tile_label(tile: int | None) -> str:
    """Legend label of a tile size (``"full"`` for no tiling)."""
    if tile is None or tile == 0 or (isinstance(tile, str) and tile.lower() in ("full", "none", "")):
        return "full"
    return f"T = {int(tile)}"


def panel_label(ax: Any, letter: str) -> None:
    """Bold ``(a)``-style label in the top-left corner outside the axes."""
    ax.text(-0.02, 1.02, f"({letter})", transform=ax.transAxes, ha="right", va="bottom", fontweight="bold")
