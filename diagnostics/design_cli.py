"""``python -m diagnostics design-schedule``: design a Newton–Schulz schedule, print it, draw it.

Prints the coefficients of :func:`matfun.design_schedule` as Python tuples
(full precision, ready to paste), the normalisation and each step's interval,
and draws the transfer function ``p_K`` of the design next to the published
schedules at the same ``K`` (log σ axis, the design interval shaded; right
panel: ``|1 − p_K(σ)|``).  Bad arguments: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

HELP = "design a minimax Newton-Schulz schedule, print it as Python tuples, draw it"
DESCRIPTION = (
    "Design a Newton-Schulz schedule with matfun.design_schedule (per-step minimax odd polynomials, "
    "as in The Polar Express) for singular values of G/||G||_F in [LOWER, UPPER], print its "
    "coefficients as Python tuples and each step's interval, and draw its transfer function next "
    "to the published schedules."
)
EXAMPLES = """\
matfun-diagnostics design-schedule --lower 1e-3 --steps 5     # the published Polar Express constants
matfun-diagnostics design-schedule --lower 1e-2 --upper 0.6 --steps 4 --precision bfloat16
matfun-diagnostics design-schedule --lower 1e-3 --degree 3 --steps 8 --no-figure
"""

PUBLISHED = ("cubic", "jordan", "you", "polar_express")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the ``design-schedule`` subcommand."""
    p.add_argument(
        "--lower",
        type=float,
        required=True,
        metavar="L",
        help="smallest normalised singular value to design for (0 < L < U)",
    )
    p.add_argument("--upper", type=float, default=1.0, metavar="U", help="largest one (default 1)")
    p.add_argument("--steps", type=int, default=5, metavar="K", help="number of steps (default 5)")
    p.add_argument("--degree", type=int, default=5, choices=(3, 5), help="polynomial degree (default 5)")
    p.add_argument("--safety", type=float, default=None, help="rounding margin (default from --precision, else 0.02)")
    p.add_argument("--cushion", type=float, default=0.02, help="cushion (default 0.02)")
    p.add_argument("--precision", default=None, help="float64, float32 or bfloat16: sets the default --safety")
    p.add_argument("--name", default=None, help="display name of the schedule")
    p.add_argument(
        "--figure",
        metavar="PATH",
        default="figures/design/design_schedule",
        help="figure path stem (PDF + PNG; default figures/design/design_schedule)",
    )
    p.add_argument("--no-figure", action="store_true", help="print the coefficients only")


def run(args: argparse.Namespace) -> int:
    """Run the command (exit 0); a bad argument raises :class:`diagnostics.cli.UsageError` (exit 2)."""
    import matfun

    from .cli import UsageError

    if not args.no_figure:
        _check_figure_stem(args.figure)
    try:
        schedule = matfun.design_schedule(
            args.lower,
            args.upper,
            args.steps,
            degree=args.degree,
            safety=args.safety,
            cushion=args.cushion,
            precision=args.precision,
            name=args.name,
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    print(f"# {schedule.name}: degree {schedule.degree}, safety {schedule.safety:g}, cushion {schedule.cushion:g}")
    print(f"# use with X0 = G / ({schedule.normalization!r} * ||G||_F); (a, b, c) per step:")
    print(schedule.python_tuples())
    for k, (lo, hi) in enumerate(schedule.bounds):
        print(f"# after {k} step(s): singular values in [{lo:.6g}, {hi:.6g}]")
    twin = same_as_published(schedule, len(schedule.coefficients))
    if twin:
        print(f"# the same coefficients as the published {twin!r} schedule")
    if args.no_figure:
        return 0
    stem = Path(args.figure)
    stem.parent.mkdir(parents=True, exist_ok=True)  # an OSError is reported by the CLI in one line
    paths = draw(schedule, stem)
    print(f"# figure: {', '.join(str(p) for p in paths)}")
    return 0


def _check_figure_stem(text: str) -> Path:
    """``--figure`` as a path stem with a file name that is not a directory, else :class:`UsageError`."""
    from .cli import UsageError

    stem = Path(text)
    if not text.strip() or not stem.name or stem.name in (".", "..") or text.endswith(("/", "\\")):
        raise UsageError(
            f"--figure needs a path stem such as figures/design/mine (PDF and PNG are written next to it), got {text!r}"
        )
    if stem.is_dir():
        raise UsageError(f"--figure {text!r} is a directory; give a path stem such as {text.rstrip('/')}/mine")
    return stem


def same_as_published(schedule, steps: int, rtol: float = 1e-6) -> str | None:
    """The published schedule whose ``steps`` coefficients and normalisation equal ``schedule``'s, if any."""
    import matfun

    mine = np.asarray(schedule.steps(steps), dtype=float)
    for name in PUBLISHED:
        other = matfun.get_schedule(name)
        theirs = np.asarray(other.steps(steps), dtype=float)
        if np.isclose(other.normalization, schedule.normalization, rtol=rtol) and np.allclose(
            mine, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max()
        ):
            return name
    return None


def _envelope(sigma_edges: np.ndarray, steps: int, schedule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin centres and the smallest / largest ``p_K`` in each log-σ bin (sampled 64 points a bin).

    ``p_K`` swings faster than any plotted grid resolves near σ = 1 (Polar Express: about 125 swings
    of ±0.14), so a curve sampled on a grid draws aliased scribble; the range per bin is what a reader
    can check (for a slowly varying ``p_K`` both ends coincide and draw one line).
    """
    import matfun

    inner = np.linspace(0.0, 1.0, 65)
    logs = np.log(sigma_edges)
    dense = np.exp(logs[:-1, None] + (logs[1:] - logs[:-1])[:, None] * inner[None, :])
    p = np.asarray(matfun.transfer_function(dense.ravel(), steps, schedule)).reshape(dense.shape)
    centres = np.sqrt(sigma_edges[:-1] * sigma_edges[1:])
    return centres, p.min(axis=1), p.max(axis=1)


def draw(schedule, stem: Path) -> list[Path]:
    """Transfer function of ``schedule`` and of the published schedules at the same K.

    Panel (a) draws the range of ``p_K`` in each log-σ bin (30 a decade): lines at its ends,
    a light fill between them.  Panel (b) draws the largest ``|1 − p_K|`` in each bin, on an
    axis cut below the design's own error (a schedule that converges further, cubic NS near
    σ = 1, leaves the axis at the bottom).  A design whose coefficients equal a published
    schedule's says so in the legend.
    """
    from . import plotting

    K = len(schedule.coefficients)
    # σ in the units of G/‖G‖_F; the design interval is [lower, upper]·normalization there
    lo, hi = schedule.lower * schedule.normalization, schedule.upper * schedule.normalization
    first = min(lo / 10, 1e-4)
    edges = np.geomspace(first, 1.0, round(-np.log10(first) * 30) + 1)  # 30 bins a decade
    twin = same_as_published(schedule, K)
    label = schedule.name + (f": the same coefficients as {plotting.schedule_label(twin)}" if twin else "")
    worst_design = None
    with plotting.style():
        fig = plotting.figure("double", 2.8, ncols=2)
        ax_p, ax_e = fig.axes
        for name in (*PUBLISHED, schedule):
            published = isinstance(name, str)
            style: dict[str, Any] = (
                {"color": plotting.schedule_color(name), "linewidth": 1.0}
                if published
                else {"color": "black", "linewidth": 1.3, "linestyle": (0, (4, 2))}
            )
            x, p_lo, p_hi = _envelope(edges, K, name)
            ax_p.plot(x, p_hi, label=plotting.schedule_label(name) if published else label, **style)
            ax_p.plot(x, p_lo, **style)
            ax_p.fill_between(x, p_lo, p_hi, color=style["color"], alpha=0.10 if published else 0.0, linewidth=0)
            err = np.maximum(np.abs(1 - p_lo), np.abs(1 - p_hi))
            ax_e.plot(x, err, **style)
            if not published:
                inside = (x >= lo) & (x <= hi)
                worst_design = float(err[inside].min()) if inside.any() else float(err.min())
        for ax in fig.axes:
            ax.axvspan(lo, min(hi, 1.0), color="0.9", zorder=0)
            ax.set_xscale("log")
            ax.set_xlabel(r"$\sigma / \|G\|_F$")
        ax_p.axhline(1.0, color="0.5", linewidth=0.6, linestyle=":")
        ax_p.set_ylim(-0.05, 1.35)  # outside the design interval p_K can grow like σ^(5^K): it leaves the axes
        ax_p.set_ylabel(rf"range of $p_K(\sigma)$ per bin, $K = {K}$")
        ax_e.set_yscale("log")
        bottom = 10.0 ** np.floor(np.log10(max(worst_design or 1e-6, 1e-15)) - 1)
        ax_e.set_ylim(bottom, 2.0)
        ax_e.set_ylabel(r"largest $|1 - p_K(\sigma)|$ per bin")
        ax_p.set_title("transfer function (design interval shaded)")
        ax_e.set_title("distance from the polar factor")
        plotting.panel_label(ax_p, "a")
        plotting.panel_label(ax_e, "b")
        handles, labels = ax_p.get_legend_handles_labels()
        ncols = len(handles) if sum(map(len, labels)) < 80 else 3
        fig.legend(handles, labels, loc="outside upper center", ncols=ncols)
        return plotting.save_figure(fig, stem)
